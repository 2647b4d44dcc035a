"""Migration: seeding the new index, and (later) the re-embed queue, worker, cutover, drift."""
