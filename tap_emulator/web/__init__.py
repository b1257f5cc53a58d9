"""The web page: a read-only view of captures as they land (`serve`, on `ui_listen`) or of a
capture directory (`browse`), built on the capture reader. Fed from publications through a
bounded hand-off and indexed in the background, so it never holds the writers back."""
