// Placeholder until the fuzz target lands (being written now).
print("fuzz target not built yet")
