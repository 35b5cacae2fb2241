package dashboard

import (
	"io/fs"
	"testing/fstest"
)

// UI is the dashboard's page: index.html at its root, the files it loads
// under static/.
//
// This is a placeholder until the page itself lands (internal/dashboard/ui.go
// embeds it, and this file goes): it says where the API is, without a
// script, which the dashboard's CSP would refuse inline anyway.
func UI() fs.FS {
	return fstest.MapFS{
		"index.html":           {Data: []byte(placeholderPage)},
		"static/dashboard.css": {Data: []byte("body{font-family:system-ui,sans-serif;margin:2rem;max-width:40rem}\n")},
	}
}

const placeholderPage = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Resound dashboard</title>
<link rel="stylesheet" href="static/dashboard.css">
</head>
<body>
<h1>Resound dashboard</h1>
<p>The page is not built into this binary yet. Its API is served here:
<code>api/login</code>, <code>api/apps</code>, <code>api/stats</code>, <code>api/console</code> and <code>api/recent</code>.</p>
</body>
</html>
`
