"""The cluster model: manifest schema, loading, validation, resolution, hostlists and addresses, the matrix and hardware profiles."""
