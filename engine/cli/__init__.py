"""Layer 10, the command line: one thin adapter per command (flags in, one engine call, what the user sees out);
engine.cli.main is the table of commands. Only this package (and engine/bundle/) prints."""
