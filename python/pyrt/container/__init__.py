"""A container's life: Container, its steps (one lifecycle for the sync and
async fronts), I/O, readiness, pause/update, health, results, pools."""
