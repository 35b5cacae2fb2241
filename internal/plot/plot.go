// Package plot draws the line charts of the benchmark and soak reports as
// standalone SVG documents: no dependencies, and the same bytes for the
// same data, so a regenerated plot only shows up in a diff when its
// numbers changed.
package plot

import (
	"bytes"
	"encoding/xml"
	"fmt"
	"math"
	"slices"
	"strconv"
)

// Point is one value of a series. When YHi > YLo an error bar spans them.
type Point struct {
	X, Y     float64
	YLo, YHi float64
}

// Series is one target's line.
type Series struct {
	Name    string
	Color   string
	Points  []Point
	Markers bool // a dot at each point (few points); otherwise just the line
}

// Chart is a line chart with a legend, written as a standalone SVG.
type Chart struct {
	Title, XLabel, YLabel string
	LogX                  bool
	// XFrom0 and YFrom0 start the axis at zero rather than at the data.
	XFrom0, YFrom0 bool
	// YMax, when positive, fixes the top of the y axis (1 for a CDF).
	YMax   float64
	Note   string // a line of small print under the x label
	Series []Series
	// Marks are vertical lines across the plot at given x values (a phase
	// that starts, a window a verdict looks at), each with a label.
	Marks []Mark
}

// Mark is a labelled vertical line.
type Mark struct {
	X     float64
	Label string
}

// Plot area in SVG units; the legend sits to the right of it.
const (
	svgW, svgH                       = 760, 430
	padL, padR, padT, padB           = 72, 190, 44, 70
	plotW, plotH                     = svgW - padL - padR, svgH - padT - padB
	fontFamily                       = "system-ui, -apple-system, Segoe UI, Helvetica, Arial, sans-serif"
	gridColor, axisColor, labelColor = "#e3e3e3", "#555", "#222"
)

// SVG renders the chart. It never fails: a chart without data says so.
func (c Chart) SVG() []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="%s" font-size="12">`+"\n", svgW, svgH, svgW, svgH, fontFamily)
	fmt.Fprintf(&b, `<rect width="%d" height="%d" fill="#fff"/>`+"\n", svgW, svgH)
	text(&b, svgW/2-padR/2+padL/2, 24, "middle", "15", "bold", c.Title)

	xlo, xhi, ylo, yhi, ok := c.bounds()
	if !ok {
		text(&b, padL+plotW/2, padT+plotH/2, "middle", "13", "", "no data")
		b.WriteString("</svg>\n")
		return b.Bytes()
	}
	var xt []float64
	if c.LogX {
		xlo, xhi, xt = logTicks(xlo, xhi)
	} else {
		xlo, xhi, xt = linearTicks(xlo, xhi)
	}
	ylo, yhi, yt := linearTicks(ylo, yhi)
	sx := func(v float64) float64 {
		if c.LogX {
			return padL + plotW*(math.Log10(v)-math.Log10(xlo))/(math.Log10(xhi)-math.Log10(xlo))
		}
		return padL + plotW*(v-xlo)/(xhi-xlo)
	}
	sy := func(v float64) float64 { return padT + plotH - plotH*(v-ylo)/(yhi-ylo) }

	b.WriteString(`<g class="grid" stroke="` + gridColor + `" stroke-width="1">` + "\n")
	for _, t := range xt {
		fmt.Fprintf(&b, `<line x1="%s" y1="%d" x2="%s" y2="%d"/>`+"\n", f1(sx(t)), padT, f1(sx(t)), padT+plotH)
	}
	for _, t := range yt {
		fmt.Fprintf(&b, `<line x1="%d" y1="%s" x2="%d" y2="%s"/>`+"\n", padL, f1(sy(t)), padL+plotW, f1(sy(t)))
	}
	b.WriteString("</g>\n")
	fmt.Fprintf(&b, `<rect class="frame" x="%d" y="%d" width="%d" height="%d" fill="none" stroke="%s"/>`+"\n", padL, padT, plotW, plotH, axisColor)
	for _, t := range xt {
		text(&b, sx(t), padT+plotH+17, "middle", "", "", tickLabel(t))
	}
	for _, t := range yt {
		text(&b, padL-7, sy(t)+4, "end", "", "", tickLabel(t))
	}
	text(&b, padL+plotW/2, padT+plotH+40, "middle", "13", "", c.XLabel)
	if c.Note != "" {
		text(&b, padL+plotW/2, padT+plotH+58, "middle", "10", "", c.Note)
	}
	fmt.Fprintf(&b, `<text transform="translate(18 %d) rotate(-90)" text-anchor="middle" font-size="13" fill="%s">%s</text>`+"\n", padT+plotH/2, labelColor, esc(c.YLabel))
	for _, m := range c.Marks {
		if m.X < xlo || m.X > xhi || (c.LogX && m.X <= 0) {
			continue
		}
		x := f1(sx(m.X))
		fmt.Fprintf(&b, `<g class="mark"><line x1="%s" y1="%d" x2="%s" y2="%d" stroke="%s" stroke-width="1" stroke-dasharray="4 3"/>`, x, padT, x, padT+plotH, axisColor)
		fmt.Fprintf(&b, `<text x="%s" y="%d" text-anchor="start" fill="%s" font-size="10">%s</text></g>`+"\n", f1(sx(m.X)+3), padT+11, labelColor, esc(m.Label))
	}

	for i, s := range c.Series {
		pts := s.Points
		if c.LogX {
			pts = slices.DeleteFunc(slices.Clone(pts), func(p Point) bool { return p.X <= 0 })
		}
		fmt.Fprintf(&b, `<g class="series" data-series="%s" stroke="%s" fill="%s">`+"\n", esc(s.Name), esc(s.Color), esc(s.Color))
		if len(pts) > 0 {
			b.WriteString(`<polyline fill="none" stroke-width="2" points="`)
			for j, p := range pts {
				if j > 0 {
					b.WriteByte(' ')
				}
				b.WriteString(f1(sx(p.X)) + "," + f1(sy(p.Y)))
			}
			b.WriteString(`"/>` + "\n")
		}
		for _, p := range pts {
			if p.YHi > p.YLo {
				x := f1(sx(p.X))
				fmt.Fprintf(&b, `<line stroke-width="1.5" x1="%s" y1="%s" x2="%s" y2="%s"/>`+"\n", x, f1(sy(p.YLo)), x, f1(sy(p.YHi)))
			}
			if s.Markers {
				fmt.Fprintf(&b, `<circle cx="%s" cy="%s" r="3.5"/>`+"\n", f1(sx(p.X)), f1(sy(p.Y)))
			}
		}
		b.WriteString("</g>\n")
		ly := padT + 10 + 22*i
		fmt.Fprintf(&b, `<g class="legend"><line x1="%d" y1="%d" x2="%d" y2="%d" stroke="%s" stroke-width="3"/>`, svgW-padR+16, ly, svgW-padR+40, ly, esc(s.Color))
		text(&b, svgW-padR+46, float64(ly)+4, "start", "", "", s.Name)
		b.WriteString("</g>\n")
	}
	b.WriteString("</svg>\n")
	return b.Bytes()
}

// bounds is the data's extent, widened to zero or to YMax when asked.
func (c Chart) bounds() (xlo, xhi, ylo, yhi float64, ok bool) {
	xlo, ylo = math.Inf(1), math.Inf(1)
	xhi, yhi = math.Inf(-1), math.Inf(-1)
	for _, s := range c.Series {
		for _, p := range s.Points {
			if c.LogX && p.X <= 0 {
				continue
			}
			xlo, xhi = min(xlo, p.X), max(xhi, p.X)
			ylo, yhi = min(ylo, p.Y), max(yhi, p.Y)
			if p.YHi > p.YLo {
				ylo, yhi = min(ylo, p.YLo), max(yhi, p.YHi)
			}
			ok = true
		}
	}
	if !ok {
		return 0, 0, 0, 0, false
	}
	if c.XFrom0 && !c.LogX {
		xlo = min(xlo, 0)
	}
	if c.YFrom0 {
		ylo = min(ylo, 0)
	}
	if c.YMax > 0 {
		yhi = c.YMax
	}
	return xlo, xhi, ylo, yhi, true
}

// linearTicks widens [lo, hi] to whole steps of 1, 2 or 5 × 10^k, about
// six of them, and returns the ticks.
func linearTicks(lo, hi float64) (float64, float64, []float64) {
	if hi <= lo {
		d := math.Max(math.Abs(lo)/10, 1)
		lo, hi = lo-d, hi+d
	}
	raw := (hi - lo) / 6
	mag := math.Pow(10, math.Floor(math.Log10(raw)))
	step := mag
	for _, m := range []float64{1, 2, 5, 10} {
		if m*mag >= raw {
			step = m * mag
			break
		}
	}
	lo = math.Floor(lo/step+1e-9) * step
	hi = math.Ceil(hi/step-1e-9) * step
	var t []float64
	for v := lo; v <= hi+step/2; v += step {
		t = append(t, math.Round(v/step)*step)
	}
	return lo, hi, t
}

// logTicks widens [lo, hi] (both > 0) to the nearest 1, 2 or 5 × 10^k
// and returns ticks at those (only the powers of ten past four decades).
func logTicks(lo, hi float64) (float64, float64, []float64) {
	a := math.Floor(math.Log10(lo))
	z := math.Ceil(math.Log10(hi))
	if z <= a {
		z = a + 1
	}
	dense := z-a <= 4
	var all []float64
	for e := a; e <= z; e++ {
		p := math.Pow(10, e)
		all = append(all, p)
		if dense && e < z {
			all = append(all, 2*p, 5*p)
		}
	}
	// The widest ticks still inside the data's ends become the axis ends.
	first, last := 0, len(all)-1
	for i, v := range all {
		if v <= lo*(1+1e-9) {
			first = i
		}
	}
	for i := len(all) - 1; i >= 0; i-- {
		if all[i] >= hi*(1-1e-9) {
			last = i
		}
	}
	if last <= first {
		last = min(first+1, len(all)-1)
	}
	t := all[first : last+1]
	return t[0], t[len(t)-1], t
}

// tickLabel prints a tick without float noise: 0.01, 2, 5k, 10k.
func tickLabel(v float64) string {
	if v != 0 && math.Abs(v) >= 1000 && math.Mod(v, 1000) == 0 {
		return strconv.FormatFloat(v/1000, 'f', -1, 64) + "k"
	}
	return strconv.FormatFloat(v, 'g', 6, 64)
}

func f1(v float64) string { return strconv.FormatFloat(v, 'f', 1, 64) }

func esc(s string) string {
	var b bytes.Buffer
	_ = xml.EscapeText(&b, []byte(s))
	return b.String()
}

func text[N int | float64](b *bytes.Buffer, x, y N, anchor, size, weight, s string) {
	fmt.Fprintf(b, `<text x="%s" y="%s" text-anchor="%s" fill="%s"`, f1(float64(x)), f1(float64(y)), anchor, labelColor)
	if size != "" {
		fmt.Fprintf(b, ` font-size="%s"`, size)
	}
	if weight != "" {
		fmt.Fprintf(b, ` font-weight="%s"`, weight)
	}
	fmt.Fprintf(b, ">%s</text>\n", esc(s))
}
