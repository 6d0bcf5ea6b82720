"""File formats both sides use: WAV facts, header, parser/checker, repair; encrypted files."""
