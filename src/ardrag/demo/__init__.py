"""`ardrag-demo`: a local web page to draw drags on an image and watch the video stream in (see app.py)."""
