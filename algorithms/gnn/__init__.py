"""GNN workloads on huge graphs: generators and loaders, hop propagation, GAMLP and the PasCa design space."""
