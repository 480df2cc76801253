"""Ray-side code: supernet training, subnet evaluation and latency profiling.

Workers receive plain data (configs, settings, paths) and return plain data; they never open
the database.
"""
