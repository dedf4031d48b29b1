"""The DUME method itself: MoE blocks, upcycling dense experts, router statistics, the ridge solve, and adding or
removing experts later. Everything else in the package runs, compares or reports it."""
