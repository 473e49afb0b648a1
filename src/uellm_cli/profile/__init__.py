"""Resource profiler: hardware, model, output lengths, and the cost model that joins them."""
