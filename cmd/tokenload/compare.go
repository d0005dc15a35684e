package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/tokencache/tokencache/internal/cli"
)

// compareCmd prints attack reports side by side, with each one's throughput
// as a ratio of the first (the baseline) measured in the same run.
func compareCmd(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("tokenload compare", flag.ContinueOnError)
	markdown := fs.Bool("markdown", false, "print a Markdown table")
	missLatency := fs.Duration("sim-latency", 0, "simulator latency of the miss runs, to report the miss overhead")
	var missNames targetList
	fs.Var(&missNames, "miss", "label of a miss run; repeat it or separate with commas")
	if err := cli.Parse(fs, args, stdout, ""); err != nil {
		return err
	}
	if fs.NArg() == 0 {
		return errors.New("usage: tokenload compare [-markdown] label=report.json [label=report.json]")
	}
	var labels []string
	var reps []attackReport
	for _, a := range fs.Args() {
		label, path, ok := strings.Cut(a, "=")
		if !ok {
			return fmt.Errorf("%q: want label=report.json", a)
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		var r attackReport
		if err := json.Unmarshal(b, &r); err != nil {
			return fmt.Errorf("%s: %v", path, err)
		}
		labels, reps = append(labels, label), append(reps, r)
	}
	for _, name := range missNames {
		if !slices.Contains(labels, name) {
			return fmt.Errorf("-miss %s: no report has that label", name)
		}
	}
	base := reps[0].Throughput
	sep, start, end := "\t", "", ""
	if *markdown {
		sep, start, end = " | ", "| ", " |"
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	row := func(cells ...string) { fmt.Fprintln(tw, start+strings.Join(cells, sep)+end) }
	row("run", "requests", "throughput/s", "vs "+labels[0], "p50", "p90", "p99", "max", "non-200", "Polyv calls")
	if *markdown {
		row("---", "---:", "---:", "---:", "---:", "---:", "---:", "---:", "---:", "---:")
	}
	for i, r := range reps {
		non200 := 0
		for code, n := range r.StatusCodes {
			if code != "200" {
				non200 += n
			}
		}
		ratio := "-"
		if base > 0 {
			ratio = fmt.Sprintf("%.2f", r.Throughput/base)
		}
		calls := "-"
		if r.UpstreamSim != nil {
			calls = fmt.Sprint(*r.UpstreamSim)
		}
		row(labels[i], fmt.Sprint(r.Requests), fmt.Sprintf("%.0f", r.Throughput), ratio, r.LatencyP50, r.LatencyP90, r.LatencyP99, r.LatencyMax, fmt.Sprint(non200), calls)
	}
	tw.Flush()
	for _, name := range missNames {
		i := slices.Index(labels, name)
		sim := float64(missLatency.Microseconds()) / 1000
		fmt.Fprintf(stdout, "\n%s overhead: median miss latency %.1f ms - simulator latency %.0f ms = %.1f ms\n",
			name, reps[i].LatencyP50Ms, sim, reps[i].LatencyP50Ms-sim)
	}
	return nil
}
