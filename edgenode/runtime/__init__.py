"""Running parts on a node: worker threads, self-benchmark, negotiation of the plan."""
