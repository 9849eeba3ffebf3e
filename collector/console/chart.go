package console

import (
	"context"
	"fmt"
	"html/template"
	"strings"
	"time"

	"github.com/posture-project/posture/collector/fleet"
	"github.com/posture-project/posture/collector/policy"
)

// chartReports is how many reports the score chart draws at most: about
// one per pixel of its width. A device's history of any length costs the
// same; a year of reports at one a minute is drawn from one in 880.
const chartReports = 720

// scorePoint is one report on the chart.
type scorePoint struct {
	At    time.Time
	Score uint32
}

// chartData is a device's score over time.
type chartData struct {
	SVG    template.HTML
	Points int
	From   time.Time
	To     time.Time
}

// scoreHistory reads a spread of the device's stored reports and scores
// each under the policy in force (its raw score, as the report says: the
// score a device has at a moment is that, decayed by the report's age).
func (c *Console) scoreHistory(ctx context.Context, id string, pol *policy.Policy) ([]scorePoint, error) {
	reps, err := c.cfg.Store.SampleReports(ctx, id, chartReports)
	if err != nil {
		return nil, err
	}
	out := make([]scorePoint, 0, len(reps))
	for _, r := range reps {
		rep := fleet.DecodeReport(r.Body)
		if rep == nil {
			continue
		}
		out = append(out, scorePoint{At: r.ReceivedAt, Score: pol.Assess(rep, r.ReceivedAt).RawScore()})
	}
	return out, nil
}

// Chart geometry, in SVG user units.
const (
	chartW, chartH    = 720.0, 180.0
	padL, padR        = 36.0, 8.0
	padTop, padBottom = 8.0, 22.0
)

// scoreChart draws the points as an SVG line chart, on the server: the
// page needs no script. Everything in it is numbers and dates the
// collector formats, nothing a device wrote.
func scoreChart(pts []scorePoint) chartData {
	d := chartData{Points: len(pts)}
	if len(pts) == 0 {
		return d
	}
	d.From, d.To = pts[0].At, pts[len(pts)-1].At
	span := d.To.Sub(d.From)
	x := func(t time.Time) float64 {
		if span <= 0 {
			return padL + (chartW-padL-padR)/2
		}
		return padL + float64(t.Sub(d.From))/float64(span)*(chartW-padL-padR)
	}
	y := func(s uint32) float64 { return padTop + (1-float64(min(s, 100))/100)*(chartH-padTop-padBottom) }
	var b strings.Builder
	fmt.Fprintf(&b, `<svg class="chart" role="img" aria-label="score over time" viewBox="0 0 %.0f %.0f" xmlns="http://www.w3.org/2000/svg">`, chartW, chartH)
	for _, s := range []uint32{0, 50, 100} {
		fmt.Fprintf(&b, `<line class="grid" x1="%.1f" x2="%.1f" y1="%.1f" y2="%.1f"/><text class="axis" x="%.1f" y="%.1f">%d</text>`,
			padL, chartW-padR, y(s), y(s), padL-6, y(s)+4, s)
	}
	layout := "2006-01-02"
	if span < 48*time.Hour {
		layout = "01-02 15:04"
	}
	fmt.Fprintf(&b, `<text class="axis start" x="%.1f" y="%.1f">%s</text>`, padL, chartH-6, d.From.Local().Format(layout))
	fmt.Fprintf(&b, `<text class="axis end" x="%.1f" y="%.1f">%s</text>`, chartW-padR, chartH-6, d.To.Local().Format(layout))
	b.WriteString(`<polyline class="score" points="`)
	for i, p := range pts {
		if i > 0 {
			b.WriteByte(' ')
		}
		fmt.Fprintf(&b, "%.1f,%.1f", x(p.At), y(p.Score))
	}
	b.WriteString(`"/>`)
	if len(pts) == 1 {
		fmt.Fprintf(&b, `<circle class="score" cx="%.1f" cy="%.1f" r="3"/>`, x(pts[0].At), y(pts[0].Score))
	}
	b.WriteString(`</svg>`)
	// Built from numbers and the collector's own date formats only.
	d.SVG = template.HTML(b.String())
	return d
}
