"""Tables, figures, sweep tables and the zoo quality matrix, all read from results (never from models)."""
