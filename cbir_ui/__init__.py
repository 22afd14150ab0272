"""The web page over `cbir`: one module per tab (search_tab, photos_tab, evaluation_tab), composed
by page.build_ui; what the page does, testable without Gradio, in behaviour and formatting; the one
place a CbirError becomes a message on the page (errors) and the check of an upload before Gradio
decodes it (upload_guard). Importing this package imports no Gradio."""
