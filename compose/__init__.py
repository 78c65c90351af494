"""lorahive.compose: math on adapters — fusion methods, merging into a base, the composer."""
