"""The inference engine: a paged KV pool, a continuous-batching scheduler and
the fixed-shape device programs every inference path runs on."""
