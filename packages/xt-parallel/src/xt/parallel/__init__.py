"""XT parallel: device meshes, FSDP2, expert and Ulysses sequence parallelism."""
