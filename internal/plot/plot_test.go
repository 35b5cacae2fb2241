package plot

import (
	"bytes"
	"encoding/xml"
	"errors"
	"io"
	"slices"
	"strings"
	"testing"
)

// svgDoc parses an SVG and returns its elements' names and attributes and
// its text, failing the test if it is not well-formed XML.
func svgDoc(t *testing.T, b []byte) (elems []xml.StartElement, texts []string) {
	t.Helper()
	d := xml.NewDecoder(bytes.NewReader(b))
	for {
		tok, err := d.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("not well-formed XML: %v\n%s", err, b)
		}
		switch v := tok.(type) {
		case xml.StartElement:
			elems = append(elems, v.Copy())
		case xml.CharData:
			if s := strings.TrimSpace(string(v)); s != "" {
				texts = append(texts, s)
			}
		}
	}
	if len(elems) == 0 || elems[0].Name.Local != "svg" {
		t.Fatalf("root element is not svg: %s", b)
	}
	return elems, texts
}

func attr(e xml.StartElement, name string) string {
	for _, a := range e.Attr {
		if a.Name.Local == name {
			return a.Value
		}
	}
	return ""
}

func TestChartSVG(t *testing.T) {
	c := Chart{
		Title: "RSS <by> connections", XLabel: "connections", YLabel: "RSS (MiB)", XFrom0: true, YFrom0: true,
		Series: []Series{
			{Name: "Resound", Color: "#1f77b4", Markers: true, Points: []Point{{X: 0, Y: 20}, {X: 5000, Y: 27, YLo: 26, YHi: 28}, {X: 19000, Y: 34}}},
			{Name: "A & B", Color: "#ff7f0e", Markers: true, Points: []Point{{X: 0, Y: 30}, {X: 5000, Y: 140}, {X: 19000, Y: 480}}},
			{Name: "empty", Color: "#000"},
		},
	}
	elems, texts := svgDoc(t, c.SVG())
	var series []string
	polylines, circles, bars := 0, 0, 0
	for _, e := range elems {
		switch e.Name.Local {
		case "g":
			if attr(e, "class") == "series" {
				series = append(series, attr(e, "data-series"))
			}
		case "polyline":
			polylines++
			if n := len(strings.Fields(attr(e, "points"))); n != 3 {
				t.Errorf("polyline has %d points, want 3", n)
			}
		case "circle":
			circles++
		case "line":
			if attr(e, "stroke-width") == "1.5" {
				bars++
			}
		}
	}
	if want := []string{"Resound", "A & B", "empty"}; !slices.Equal(series, want) {
		t.Errorf("series %q, want %q", series, want)
	}
	if polylines != 2 || circles != 6 || bars != 1 {
		t.Errorf("%d polylines, %d markers, %d error bars; want 2, 6, 1", polylines, circles, bars)
	}
	for _, want := range []string{"RSS <by> connections", "connections", "RSS (MiB)", "Resound", "A & B", "0", "5k", "20k"} {
		if !slices.Contains(texts, want) {
			t.Errorf("no text %q in %q", want, texts)
		}
	}
}

func TestChartSVGLogAxis(t *testing.T) {
	c := Chart{Title: "latency", LogX: true, YFrom0: true, YMax: 1, Series: []Series{
		{Name: "x", Color: "#000", Points: []Point{{X: 0, Y: 0}, {X: 0.4, Y: 0.1}, {X: 8, Y: 0.5}, {X: 35, Y: 1}}},
	}}
	elems, texts := svgDoc(t, c.SVG())
	// 0.4 to 35 ms widens to the nearest 1, 2 or 5 ticks: 0.2 to 50.
	for _, want := range []string{"0.2", "0.5", "1", "10", "50", "0", "0.6"} {
		if !slices.Contains(texts, want) {
			t.Errorf("no tick %q in %q", want, texts)
		}
	}
	for _, bad := range []string{"0.1", "100"} {
		if slices.Contains(texts, bad) {
			t.Errorf("tick %q beyond the data's next round value: %q", bad, texts)
		}
	}
	for _, e := range elems {
		if e.Name.Local == "polyline" {
			// The point at x=0 cannot be on a log axis and is left out.
			if n := len(strings.Fields(attr(e, "points"))); n != 3 {
				t.Errorf("polyline has %d points, want 3", n)
			}
		}
	}
}

func TestChartSVGNoData(t *testing.T) {
	_, texts := svgDoc(t, Chart{Title: "nothing", Series: []Series{{Name: "a"}}}.SVG())
	if !slices.Contains(texts, "no data") {
		t.Errorf("texts %q lack 'no data'", texts)
	}
}

func TestChartMarks(t *testing.T) {
	c := Chart{Title: "marks", Series: []Series{{Name: "x", Color: "#000", Points: []Point{{X: 0, Y: 1}, {X: 10, Y: 2}}}},
		Marks: []Mark{{X: 5, Label: "load stops"}, {X: 50, Label: "beyond the data"}}}
	elems, texts := svgDoc(t, c.SVG())
	marks := 0
	for _, e := range elems {
		if e.Name.Local == "g" && attr(e, "class") == "mark" {
			marks++
		}
	}
	if marks != 1 || !slices.Contains(texts, "load stops") || slices.Contains(texts, "beyond the data") {
		t.Errorf("%d marks, texts %q; want the one inside the x range", marks, texts)
	}
}
