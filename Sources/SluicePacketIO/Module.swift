// Placeholder until the packet I/O lands (being written now).
