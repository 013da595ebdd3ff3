"""Each stage's contract (config section, inputs, outputs, the packages its fingerprint covers) and its run(); the pipeline that runs them in order; model generations for --update."""
