"""pathvlm's apps for people: the demo now, the web chat and HTTP API next. Imports the library, never the reverse."""
