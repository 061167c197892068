"""Small helpers with no project imports: redaction of secrets, atomic file writes."""
