"""The API's OpenAPI 3.1 document (built from the validators' own limits) and its docs page."""
