"""The web page at GET / (package data: index.html, page.css, page.js)."""
