"""Real model families (a transformer LM, a CNN) as targets: they import only the core and follow
the target contract (`paramdecomp.core.target.Target`). The toy targets with ground truth live in
the top-level `toy_models/`."""
