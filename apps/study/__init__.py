"""The study dashboard at /study: what researchers look at while a study runs and after it.

Server-rendered pages (routes) over the participants, their saves and sketches and their
generations (participants, with attribution reading whom a record was for), a
generation's steps on a time axis (step_timeline) and its stimulus cards (cards), and
thumbnails made on the server (thumbnails). Every asset comes from this server: a study
network may be offline.
"""
