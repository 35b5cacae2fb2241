package dashboard

import (
	"embed"
	"io/fs"
)

// The dashboard's page: plain HTML, CSS and ES modules, embedded so that
// the binary needs nothing beside it and a user runs no build step.
// index.html is the page (served at the dashboard path, with a trailing
// slash: every URL in it is relative to that); static/ holds its scripts,
// styles and icon. No file has inline script or style, so the page runs
// under Content-Security-Policy: default-src 'self'.
//
//go:embed ui
var ui embed.FS

// UI returns the page's files, rooted at ui/: index.html and static/...
func UI() fs.FS {
	sub, err := fs.Sub(ui, "ui")
	if err != nil {
		// fs.Sub fails only on an invalid path, and "ui" is a constant.
		panic(err)
	}
	return sub
}
