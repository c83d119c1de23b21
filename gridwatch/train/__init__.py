"""Training on this machine's CPU (issue 8 part 4): the false-alarm verifier (`gridwatch.train.verifier`)."""
