"""The sketching app (APP_PAINT): participant sessions and its generation pipelines."""
