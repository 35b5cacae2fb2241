package dashboard

import (
	"io/fs"
	"regexp"
	"strings"
	"testing"
)

// The page must run under Content-Security-Policy: default-src 'self' and
// under any dashboard path and REVERB_SERVER_PATH prefix. tests/browser
// checks it in Chromium; this checks the files for what would break it.
func TestUIFiles(t *testing.T) {
	ui := UI()
	index, err := fs.ReadFile(ui, "index.html")
	if err != nil {
		t.Fatal(err)
	}
	page := string(index)

	// Every file the page names is embedded, and named relatively.
	refs := regexp.MustCompile(`(?:src|href)="([^"]*)"`).FindAllStringSubmatch(page, -1)
	if len(refs) == 0 {
		t.Fatal("index.html names no file")
	}
	for _, m := range refs {
		ref := m[1]
		if strings.HasPrefix(ref, "#") {
			continue
		}
		if strings.HasPrefix(ref, "/") || strings.Contains(ref, "//") {
			t.Errorf("index.html names %q: not relative to the page", ref)
			continue
		}
		if _, err := fs.Stat(ui, ref); err != nil {
			t.Errorf("index.html names %q: %v", ref, err)
		}
	}

	// No inline script, style or event handler (CSP would refuse them).
	for _, bad := range []*regexp.Regexp{
		regexp.MustCompile(`<script(?:\s[^>]*)?>\s*[^<\s]`), // a script with a body
		regexp.MustCompile(`<style`),
		regexp.MustCompile(`\sstyle=`),
		regexp.MustCompile(`\son[a-z]+=`),
		regexp.MustCompile(`javascript:`),
	} {
		if loc := bad.FindStringIndex(page); loc != nil {
			t.Errorf("index.html has %q, which CSP default-src 'self' refuses", page[loc[0]:min(loc[1]+40, len(page))])
		}
	}

	for _, tag := range regexp.MustCompile(`<script[^>]*>`).FindAllString(page, -1) {
		if !strings.Contains(tag, " src=") {
			t.Errorf("index.html has %s: an inline script", tag)
		}
	}

	// The scripts build the DOM from text (nothing a client sends becomes
	// markup), never evaluate strings, and reach the API relatively.
	scripts, err := fs.Glob(ui, "static/*.js")
	if err != nil || len(scripts) == 0 {
		t.Fatalf("no scripts in static/ (%v)", err)
	}
	for _, name := range scripts {
		b, err := fs.ReadFile(ui, name)
		if err != nil {
			t.Fatal(err)
		}
		src := string(b)
		for _, bad := range []string{"innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function", "setAttribute('style'", `'/api/`, `"/api/`, "`/api/"} {
			if strings.Contains(src, bad) {
				t.Errorf("%s uses %s", name, bad)
			}
		}
	}
}
