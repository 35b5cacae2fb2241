// Package browser tests the dashboard in a real headless Chromium (Debian's
// chromium package, which scripts/setup-browser.sh installs and `go tool
// task test` starts installing in the background), driven over the
// DevTools protocol with chromedp.
//
// TestDashboardLive runs a real all-in-one gateway process with the
// dashboard on: it signs in through the form, opens an app, and waits for
// an event triggered through the HTTP API and a WebSocket client's
// connection to appear in the debug console. TestDashboardPage runs the
// page against a stand-in for the dashboard's API (fake_test.go) to check
// what a live cluster cannot show on demand: a refused sign-in, the
// filters, pause, the row cap, and the notice of dropped entries.
//
// Each test takes a screenshot of each page into its artifact directory
// (go test -artifacts keeps them), or into RESOUND_SCREENSHOTS when that
// is set: RESOUND_SCREENSHOTS=docs/img makes the README's pictures.
package browser
