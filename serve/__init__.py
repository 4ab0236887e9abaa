"""pathvlm's apps for people: the web app and HTTP API (``pathvlm serve``) and the terminal demo. Imports the library, never the reverse."""
