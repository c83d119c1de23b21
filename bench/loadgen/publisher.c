/*
 * publisher.c - compiled MQTT load generator for `gridwatch bench sensors`.
 *
 * Publishes synthetic sensor readings to an MQTT broker at a fixed offered
 * rate and prints one JSON summary line on stdout when it is done.
 *
 * Why C: a Python (paho) publisher needs ~1.8 cores for 20k msg/s, which on a
 * 2-core benchmark machine would make the load generator the bottleneck and
 * starve the system under test.  This program uses libmosquitto's threaded
 * network loop and paces itself with absolute-deadline sleeps, so it costs a
 * small fraction of a core at the same rate.
 *
 * Build:  gcc -O2 -Wall -o publisher publisher.c -lmosquitto -lm
 *         (bench/loadgen.py: build_publisher() does this for you)
 *
 * Payload of a valid reading (exactly this byte layout):
 *     {"v":1,"ts":<epoch ms, stamped just before publish>,"value":<%.3f>}
 * Topic: the template with its single "%s" replaced by the sensor id,
 * sensor ids are <prefix><i:05d> for i in 0..N-1, published round robin.
 *
 * Flow control / memory: libmosquitto accepts every QoS>0 publish and, when
 * its in-flight window is full, silently appends it to an unbounded internal
 * queue.  To keep memory bounded we keep our own count of unacknowledged
 * messages and never hand libmosquitto more than the in-flight window; when
 * the window is full the schedule keeps running and we record how far behind
 * it we are ("max_behind", in messages) and catch up once acks return.
 * Don't make the window much bigger than needed (rate x round trip): in
 * libmosquitto 2.0 each publish and each PUBACK walks the whole in-flight
 * list, so a full window of N makes every message cost O(N).
 *
 * Exit status: 0 after a run (even if not everything was acked: the JSON
 * says so), 2 if the broker cannot be reached or refuses the connection,
 * 64 on bad usage.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <mosquitto.h>
#include <mqtt_protocol.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#define EXIT_CONNECT 2
#define EXIT_USAGE 64
#define CONNACK_TIMEOUT_S 10.0

struct options {
	const char *host;
	int port;
	double rate;            /* readings per second, all sensors together */
	double duration;        /* seconds of offered load */
	long sensors;
	const char *prefix;
	const char *topic_template;
	int qos;
	const char *client_id;
	int max_inflight;
	long invalid_every;     /* 0 = never */
	const char *anomaly_sensor;
	double anomaly_at;      /* seconds after the start of the schedule */
	double anomaly_value;
	int protocol;           /* MQTT_PROTOCOL_V311 or MQTT_PROTOCOL_V5 */
	double ack_timeout;     /* seconds to wait for outstanding PUBACKs */
	double late_limit;      /* stop catching up this long after the schedule ends */
	long tick_us;           /* pacing granularity */
	int keepalive;
	uint64_t seed;
};

/* Written by libmosquitto's network thread (callbacks), read by main. */
struct shared {
	atomic_llong acked;          /* PUBACK received (or QoS 0 written) */
	atomic_llong failed;         /* MQTT v5 PUBACK with a reason code >= 0x80 */
	atomic_int connack_rc;       /* -1 until the first CONNACK arrives */
	atomic_int server_receive_max; /* v5 CONNACK receive-maximum, 0 = not sent */
	atomic_int disconnects;      /* unexpected disconnects */
};

static volatile sig_atomic_t stop_signals = 0;

static void on_signal(int sig)
{
	(void)sig;
	stop_signals++;
}

static void on_connect(struct mosquitto *mosq, void *obj, int rc, int flags, const mosquitto_property *props)
{
	struct shared *sh = obj;
	uint16_t rm = 0;
	(void)mosq;
	(void)flags;
	/* With MQTT v5 the broker may lower our send window (mosquitto sends its
	 * max_inflight_messages here); remember it so our own window matches. */
	if(props && mosquitto_property_read_int16(props, MQTT_PROP_RECEIVE_MAXIMUM, &rm, false)){
		atomic_store(&sh->server_receive_max, (int)rm);
	}
	atomic_store(&sh->connack_rc, rc);
}

static void on_disconnect(struct mosquitto *mosq, void *obj, int rc, const mosquitto_property *props)
{
	struct shared *sh = obj;
	(void)mosq;
	(void)props;
	if(rc != 0){ /* 0 means we asked for it */
		atomic_fetch_add(&sh->disconnects, 1);
	}
}

static void on_publish(struct mosquitto *mosq, void *obj, int mid, int reason_code, const mosquitto_property *props)
{
	struct shared *sh = obj;
	(void)mosq;
	(void)mid;
	(void)props;
	if(reason_code >= 0x80){
		atomic_fetch_add_explicit(&sh->failed, 1, memory_order_relaxed);
	}else{
		atomic_fetch_add_explicit(&sh->acked, 1, memory_order_relaxed);
	}
}

static double ts_diff(const struct timespec *a, const struct timespec *b)
{
	return (double)(a->tv_sec - b->tv_sec) + (double)(a->tv_nsec - b->tv_nsec) / 1e9;
}

static double since(const struct timespec *t0)
{
	struct timespec now;
	clock_gettime(CLOCK_MONOTONIC, &now);
	return ts_diff(&now, t0);
}

static struct timespec ts_add(const struct timespec *t0, double seconds)
{
	struct timespec t = *t0;
	long long ns = (long long)t.tv_nsec + (long long)llround(seconds * 1e9);
	t.tv_sec += (time_t)(ns / 1000000000LL);
	t.tv_nsec = (long)(ns % 1000000000LL);
	return t;
}

static void sleep_until(const struct timespec *deadline)
{
	/* Absolute deadlines keep the schedule from drifting by the time spent
	 * publishing; EINTR (a signal) simply returns early to the caller. */
	clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, deadline, NULL);
}

static void sleep_s(double seconds)
{
	struct timespec t0;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	struct timespec d = ts_add(&t0, seconds);
	sleep_until(&d);
}

static long long epoch_ms(void)
{
	struct timespec now;
	clock_gettime(CLOCK_REALTIME, &now); /* vDSO: no syscall, cheap per message */
	return (long long)now.tv_sec * 1000LL + now.tv_nsec / 1000000L;
}

/* xorshift64*: the noise only needs to look random, not be random. */
static uint64_t rng_state;

static double noise(void)
{
	rng_state ^= rng_state >> 12;
	rng_state ^= rng_state << 25;
	rng_state ^= rng_state >> 27;
	uint64_t r = rng_state * 0x2545F4914F6CDD1DULL;
	return (double)(r >> 11) / 9007199254740992.0 - 0.5; /* [-0.5, 0.5) */
}

static void usage(FILE *out)
{
	fprintf(out,
		"usage: publisher --rate R --duration S [options]\n"
		"  --host H              broker host (127.0.0.1)\n"
		"  --port P              broker port (1883)\n"
		"  --rate R              readings per second, all sensors together (1000)\n"
		"  --duration S          seconds of offered load (10)\n"
		"  --sensors N           number of sensors, published round robin (100)\n"
		"  --sensor-prefix P     sensor ids are P%%05d (bench-)\n"
		"  --topic-template T    topic with one %%s for the sensor id (gridwatch/sensors/%%s/reading)\n"
		"  --qos Q               0, 1 or 2 (1)\n"
		"  --client-id ID        MQTT client id (gridwatch-loadgen-<pid>)\n"
		"  --max-inflight N      unacknowledged messages allowed, 1..65535 (1000)\n"
		"  --invalid-every K     every K-th message is a malformed (non-JSON) payload (off)\n"
		"  --anomaly-sensor ID   sensor whose value is forced ...\n"
		"  --anomaly-at S        ... from S seconds after the start ...\n"
		"  --anomaly-value V     ... to V\n"
		"  --protocol 311|5      MQTT protocol version (311)\n"
		"  --ack-timeout S       wait this long for outstanding PUBACKs at the end (30)\n"
		"  --late-limit S        stop catching up S seconds after the schedule ends (10)\n"
		"  --tick-us U           pacing granularity in microseconds (1000)\n"
		"  --keepalive S         MQTT keepalive (30)\n"
		"  --seed N              noise seed (1)\n"
		"Prints one JSON line with the results on stdout.\n");
}

static int parse_double(const char *name, const char *s, double *out)
{
	char *end;
	errno = 0;
	double v = strtod(s, &end);
	if(errno || end == s || *end || !isfinite(v)){
		fprintf(stderr, "publisher: --%s: not a finite number: %s\n", name, s);
		return -1;
	}
	*out = v;
	return 0;
}

static int parse_long(const char *name, const char *s, long lo, long hi, long *out)
{
	char *end;
	errno = 0;
	long v = strtol(s, &end, 10);
	if(errno || end == s || *end || v < lo || v > hi){
		fprintf(stderr, "publisher: --%s: expected an integer in [%ld, %ld]: %s\n", name, lo, hi, s);
		return -1;
	}
	*out = v;
	return 0;
}

static int parse_args(int argc, char **argv, struct options *o)
{
	enum {
		O_HOST = 1000, O_PORT, O_RATE, O_DURATION, O_SENSORS, O_PREFIX, O_TEMPLATE, O_QOS,
		O_CLIENT_ID, O_MAX_INFLIGHT, O_INVALID_EVERY, O_ANOM_SENSOR, O_ANOM_AT, O_ANOM_VALUE,
		O_PROTOCOL, O_ACK_TIMEOUT, O_LATE_LIMIT, O_TICK_US, O_KEEPALIVE, O_SEED, O_HELP,
	};
	static const struct option longopts[] = {
		{"host", required_argument, NULL, O_HOST},
		{"port", required_argument, NULL, O_PORT},
		{"rate", required_argument, NULL, O_RATE},
		{"duration", required_argument, NULL, O_DURATION},
		{"sensors", required_argument, NULL, O_SENSORS},
		{"sensor-prefix", required_argument, NULL, O_PREFIX},
		{"topic-template", required_argument, NULL, O_TEMPLATE},
		{"qos", required_argument, NULL, O_QOS},
		{"client-id", required_argument, NULL, O_CLIENT_ID},
		{"max-inflight", required_argument, NULL, O_MAX_INFLIGHT},
		{"invalid-every", required_argument, NULL, O_INVALID_EVERY},
		{"anomaly-sensor", required_argument, NULL, O_ANOM_SENSOR},
		{"anomaly-at", required_argument, NULL, O_ANOM_AT},
		{"anomaly-value", required_argument, NULL, O_ANOM_VALUE},
		{"protocol", required_argument, NULL, O_PROTOCOL},
		{"ack-timeout", required_argument, NULL, O_ACK_TIMEOUT},
		{"late-limit", required_argument, NULL, O_LATE_LIMIT},
		{"tick-us", required_argument, NULL, O_TICK_US},
		{"keepalive", required_argument, NULL, O_KEEPALIVE},
		{"seed", required_argument, NULL, O_SEED},
		{"help", no_argument, NULL, O_HELP},
		{NULL, 0, NULL, 0},
	};
	bool have_anom_value = false;
	long l;
	int c;

	while((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1){
		switch(c){
			case O_HOST: o->host = optarg; break;
			case O_PORT: if(parse_long("port", optarg, 1, 65535, &l)) return -1; o->port = (int)l; break;
			case O_RATE: if(parse_double("rate", optarg, &o->rate)) return -1; break;
			case O_DURATION: if(parse_double("duration", optarg, &o->duration)) return -1; break;
			case O_SENSORS: if(parse_long("sensors", optarg, 1, 10000000, &o->sensors)) return -1; break;
			case O_PREFIX: o->prefix = optarg; break;
			case O_TEMPLATE: o->topic_template = optarg; break;
			case O_QOS: if(parse_long("qos", optarg, 0, 2, &l)) return -1; o->qos = (int)l; break;
			case O_CLIENT_ID: o->client_id = optarg; break;
			case O_MAX_INFLIGHT:
				if(parse_long("max-inflight", optarg, 1, 65535, &l)) return -1;
				o->max_inflight = (int)l;
				break;
			case O_INVALID_EVERY:
				if(parse_long("invalid-every", optarg, 0, LONG_MAX, &o->invalid_every)) return -1;
				break;
			case O_ANOM_SENSOR: o->anomaly_sensor = optarg; break;
			case O_ANOM_AT: if(parse_double("anomaly-at", optarg, &o->anomaly_at)) return -1; break;
			case O_ANOM_VALUE:
				if(parse_double("anomaly-value", optarg, &o->anomaly_value)) return -1;
				have_anom_value = true;
				break;
			case O_PROTOCOL:
				if(!strcmp(optarg, "311") || !strcmp(optarg, "3.1.1") || !strcmp(optarg, "4")){
					o->protocol = MQTT_PROTOCOL_V311;
				}else if(!strcmp(optarg, "5") || !strcmp(optarg, "5.0")){
					o->protocol = MQTT_PROTOCOL_V5;
				}else{
					fprintf(stderr, "publisher: --protocol: expected 311 or 5: %s\n", optarg);
					return -1;
				}
				break;
			case O_ACK_TIMEOUT: if(parse_double("ack-timeout", optarg, &o->ack_timeout)) return -1; break;
			case O_LATE_LIMIT: if(parse_double("late-limit", optarg, &o->late_limit)) return -1; break;
			case O_TICK_US: if(parse_long("tick-us", optarg, 50, 1000000, &o->tick_us)) return -1; break;
			case O_KEEPALIVE: if(parse_long("keepalive", optarg, 5, 65535, &l)) return -1; o->keepalive = (int)l; break;
			case O_SEED: if(parse_long("seed", optarg, 0, LONG_MAX, &l)) return -1; o->seed = (uint64_t)l; break;
			case 'h': case O_HELP: usage(stdout); exit(0);
			default: usage(stderr); return -1;
		}
	}
	if(optind < argc){
		fprintf(stderr, "publisher: unexpected argument: %s\n", argv[optind]);
		return -1;
	}
	if(o->rate <= 0 || o->duration <= 0){
		fprintf(stderr, "publisher: --rate and --duration must be > 0\n");
		return -1;
	}
	if(o->ack_timeout < 0 || o->late_limit < 0){
		fprintf(stderr, "publisher: --ack-timeout and --late-limit must be >= 0\n");
		return -1;
	}
	if(o->anomaly_sensor && !have_anom_value){
		fprintf(stderr, "publisher: --anomaly-sensor needs --anomaly-value\n");
		return -1;
	}
	/* Keeps every "%.3f" rendering well inside the fixed payload buffer. */
	if(fabs(o->anomaly_value) >= 1e12){
		fprintf(stderr, "publisher: --anomaly-value must be within +-1e12\n");
		return -1;
	}
	/* The template is substituted by hand (not used as a printf format) so a
	 * stray '%' in it can never read garbage; it must hold exactly one "%s". */
	const char *first = strstr(o->topic_template, "%s");
	if(!first || strstr(first + 2, "%s")){
		fprintf(stderr, "publisher: --topic-template must contain exactly one %%s: %s\n", o->topic_template);
		return -1;
	}
	return 0;
}

static char *make_topic(const char *template, const char *id)
{
	const char *at = strstr(template, "%s");
	size_t head = (size_t)(at - template);
	size_t len = strlen(template) - 2 + strlen(id);
	char *t = malloc(len + 1);
	if(!t) return NULL;
	memcpy(t, template, head);
	strcpy(t + head, id);
	strcat(t, at + 2);
	return t;
}

int main(int argc, char **argv)
{
	struct options o = {
		.host = "127.0.0.1", .port = 1883, .rate = 1000, .duration = 10, .sensors = 100,
		.prefix = "bench-", .topic_template = "gridwatch/sensors/%s/reading", .qos = 1,
		.client_id = NULL, .max_inflight = 1000, .invalid_every = 0, .anomaly_sensor = NULL,
		.protocol = MQTT_PROTOCOL_V311, .ack_timeout = 30, .late_limit = 10, .tick_us = 1000,
		.keepalive = 30, .seed = 1,
	};
	if(parse_args(argc, argv, &o)) return EXIT_USAGE;
	rng_state = o.seed * 0x9E3779B97F4A7C15ULL + 0x2545F4914F6CDD1DULL;
	if(!rng_state) rng_state = 1;

	/* Precompute every topic and the per-sensor sine parameters once, so the
	 * hot loop only formats the payload and calls mosquitto_publish. */
	char **topics = calloc((size_t)o.sensors, sizeof(char *));
	double *omega = calloc((size_t)o.sensors, sizeof(double));
	double *phase = calloc((size_t)o.sensors, sizeof(double));
	if(!topics || !omega || !phase){
		fprintf(stderr, "publisher: out of memory\n");
		return 1;
	}
	long anomaly_idx = -1;
	for(long i = 0; i < o.sensors; i++){
		char id[256];
		if(snprintf(id, sizeof(id), "%s%05ld", o.prefix, i) >= (int)sizeof(id)){
			fprintf(stderr, "publisher: --sensor-prefix too long\n");
			return EXIT_USAGE;
		}
		if(o.anomaly_sensor && !strcmp(id, o.anomaly_sensor)) anomaly_idx = i;
		topics[i] = make_topic(o.topic_template, id);
		if(!topics[i]){
			fprintf(stderr, "publisher: out of memory\n");
			return 1;
		}
		if(mosquitto_pub_topic_check(topics[i]) != MOSQ_ERR_SUCCESS){
			fprintf(stderr, "publisher: not a valid topic to publish to: %s\n", topics[i]);
			return EXIT_USAGE;
		}
		/* Periods of 4-9 minutes and golden-angle phases: neighbouring
		 * sensors differ, each one drifts slowly like a real temperature. */
		omega[i] = 2.0 * M_PI / (240.0 + 30.0 * (double)(i % 11));
		phase[i] = 2.399963229728653 * (double)i;
	}
	if(o.anomaly_sensor && anomaly_idx < 0){
		fprintf(stderr, "publisher: --anomaly-sensor %s is not one of %s00000..%s%05ld\n",
			o.anomaly_sensor, o.prefix, o.prefix, o.sensors - 1);
		return EXIT_USAGE;
	}

	char default_id[64];
	if(!o.client_id){
		snprintf(default_id, sizeof(default_id), "gridwatch-loadgen-%ld", (long)getpid());
		o.client_id = default_id;
	}

	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal; /* no SA_RESTART: let the sleeps return early */
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	signal(SIGPIPE, SIG_IGN); /* a dropped connection must not kill us mid-run */

	struct shared sh;
	atomic_init(&sh.acked, 0);
	atomic_init(&sh.failed, 0);
	atomic_init(&sh.connack_rc, -1);
	atomic_init(&sh.server_receive_max, 0);
	atomic_init(&sh.disconnects, 0);

	mosquitto_lib_init();
	struct mosquitto *mosq = mosquitto_new(o.client_id, true, &sh);
	if(!mosq){
		fprintf(stderr, "publisher: mosquitto_new failed: %s\n", strerror(errno));
		return 1;
	}
	mosquitto_int_option(mosq, MOSQ_OPT_PROTOCOL_VERSION, o.protocol);
	/* Same as mosquitto_max_inflight_messages_set() in libmosquitto 2.x. */
	mosquitto_int_option(mosq, MOSQ_OPT_SEND_MAXIMUM, o.max_inflight);
	/* ts is stamped at publish time, so Nagle must not hold small packets back. */
	mosquitto_int_option(mosq, MOSQ_OPT_TCP_NODELAY, 1);
	mosquitto_connect_v5_callback_set(mosq, on_connect);
	mosquitto_disconnect_v5_callback_set(mosq, on_disconnect);
	mosquitto_publish_v5_callback_set(mosq, on_publish);

	int rc = mosquitto_connect(mosq, o.host, o.port, o.keepalive);
	if(rc != MOSQ_ERR_SUCCESS){
		fprintf(stderr, "publisher: cannot connect to %s:%d: %s\n", o.host, o.port,
			rc == MOSQ_ERR_ERRNO ? strerror(errno) : mosquitto_strerror(rc));
		return EXIT_CONNECT;
	}
	rc = mosquitto_loop_start(mosq);
	if(rc != MOSQ_ERR_SUCCESS){
		fprintf(stderr, "publisher: mosquitto_loop_start: %s\n", mosquitto_strerror(rc));
		return 1;
	}
	struct timespec t_conn;
	clock_gettime(CLOCK_MONOTONIC, &t_conn);
	while(atomic_load(&sh.connack_rc) < 0 && since(&t_conn) < CONNACK_TIMEOUT_S && !stop_signals){
		sleep_s(0.001);
	}
	int connack = atomic_load(&sh.connack_rc);
	if(connack != 0){
		if(connack < 0){
			fprintf(stderr, "publisher: no CONNACK from %s:%d within %.0f s\n", o.host, o.port, CONNACK_TIMEOUT_S);
		}else{
			fprintf(stderr, "publisher: %s:%d refused the connection: %s\n", o.host, o.port,
				o.protocol == MQTT_PROTOCOL_V5 ? mosquitto_reason_string(connack) : mosquitto_connack_string(connack));
		}
		mosquitto_loop_stop(mosq, true);
		return EXIT_CONNECT;
	}
	long long window = o.max_inflight;
	int server_rm = atomic_load(&sh.server_receive_max);
	if(server_rm > 0 && server_rm < window) window = server_rm;

	/* ---- the paced publishing loop ---- */
	const long long total = llround(o.rate * o.duration);
	const double tick = (double)o.tick_us / 1e6;
	const double hard_stop = o.duration + o.late_limit;
	long long sent = 0, invalid_sent = 0, max_behind = 0, publish_errors = 0;
	int last_error = MOSQ_ERR_SUCCESS;
	char payload[128];
	struct timespec t0;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	double t_last = 0;

	while(sent < total && !stop_signals){
		double el = since(&t0);
		if(el > hard_stop) break;
		/* Message n (0-based) is due at n / rate: publish everything due so
		 * far in one burst, so one wake-up serves many messages. */
		long long due = (long long)(el * o.rate) + 1;
		if(due > total) due = total;
		while(sent < due){
			long long done = atomic_load_explicit(&sh.acked, memory_order_relaxed)
				+ atomic_load_explicit(&sh.failed, memory_order_relaxed);
			if(sent - done >= window) break; /* window full: wait for acks */

			long idx = (long)(sent % o.sensors);
			long long ts = epoch_ms();
			bool invalid = o.invalid_every > 0 && (sent + 1) % o.invalid_every == 0;
			int len;
			if(invalid){
				/* Truncated JSON: looks like a reading but cannot be parsed,
				 * so the consumer must dead-letter it. */
				len = snprintf(payload, sizeof(payload), "{\"v\":1,\"ts\":%lld,\"value\":", ts);
			}else{
				double t = el; /* schedule time: cheap and monotonic */
				double value;
				if(idx == anomaly_idx && t >= o.anomaly_at){
					value = o.anomaly_value;
				}else{
					value = 20.0 + 5.0 * sin(omega[idx] * t + phase[idx]) + 0.2 * noise();
				}
				len = snprintf(payload, sizeof(payload), "{\"v\":1,\"ts\":%lld,\"value\":%.3f}", ts, value);
			}
			rc = mosquitto_publish(mosq, NULL, topics[idx], len, payload, o.qos, false);
			/* For QoS>0 libmosquitto has queued the message even when it
			 * reports NO_CONN, and sends it after reconnecting. */
			if(rc != MOSQ_ERR_SUCCESS && !(rc == MOSQ_ERR_NO_CONN && o.qos > 0)){
				publish_errors++;
				last_error = rc;
				break; /* retry on the next tick; the schedule records the lag */
			}
			if(invalid) invalid_sent++;
			sent++;
		}
		if(due - sent > max_behind) max_behind = due - sent;
		t_last = since(&t0);
		if(sent >= total) break;

		/* Sleep one tick, or until the next message is due if that is later
		 * (low rates then cost almost nothing). */
		double next = el + tick;
		double next_due = (double)sent / o.rate;
		if(due == sent && next_due > next) next = next_due;
		struct timespec wake = ts_add(&t0, next);
		sleep_until(&wake);
	}
	double elapsed = sent > 0 ? t_last : since(&t0);

	/* ---- wait for the outstanding acknowledgements ---- */
	int signals_at_end = stop_signals;
	struct timespec t_ack;
	clock_gettime(CLOCK_MONOTONIC, &t_ack);
	while(since(&t_ack) < o.ack_timeout && stop_signals <= signals_at_end){
		long long done = atomic_load(&sh.acked) + atomic_load(&sh.failed);
		if(done >= sent) break;
		sleep_s(0.001);
	}
	double ack_wait = since(&t_ack);

	long long acked = atomic_load(&sh.acked);
	long long failed = atomic_load(&sh.failed);
	if(mosquitto_disconnect(mosq) == MOSQ_ERR_SUCCESS){
		mosquitto_loop_stop(mosq, false);
	}else{
		mosquitto_loop_stop(mosq, true);
	}
	mosquitto_destroy(mosq);
	mosquitto_lib_cleanup();

	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru); /* RUSAGE_SELF covers all threads */
	double cpu_user = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6;
	double cpu_sys = (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;

	if(publish_errors){
		fprintf(stderr, "publisher: %lld publish calls failed, last: %s\n", publish_errors, mosquitto_strerror(last_error));
	}
	printf("{\"offered_rate\":%.3f,\"sent\":%lld,\"acked\":%lld,\"invalid_sent\":%lld,"
		"\"elapsed_s\":%.3f,\"achieved_rate\":%.1f,\"max_behind\":%lld,\"cpu_s\":%.3f,"
		"\"cpu_user_s\":%.3f,\"cpu_sys_s\":%.3f,\"due\":%lld,\"failed\":%lld,\"unacked\":%lld,"
		"\"ack_wait_s\":%.3f,\"disconnects\":%d,\"publish_errors\":%lld,\"interrupted\":%s,"
		"\"protocol\":\"%s\",\"qos\":%d,\"window\":%lld,\"sensors\":%ld,\"max_rss_kb\":%ld}\n",
		o.rate, sent, acked, invalid_sent,
		elapsed, elapsed > 0 ? (double)sent / elapsed : 0.0, max_behind, cpu_user + cpu_sys,
		cpu_user, cpu_sys, total, failed, sent - acked - failed,
		ack_wait, atomic_load(&sh.disconnects), publish_errors, stop_signals ? "true" : "false",
		o.protocol == MQTT_PROTOCOL_V5 ? "5" : "3.1.1", o.qos, window, o.sensors, ru.ru_maxrss);
	fflush(stdout);

	for(long i = 0; i < o.sensors; i++) free(topics[i]);
	free(topics);
	free(omega);
	free(phase);
	return 0;
}
