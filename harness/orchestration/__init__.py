"""Running a plan: jobs, executors (inline, local, SLURM), the reproduce pipeline, status and ETAs, the GPU check."""
