package main

import (
	"cmp"
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
// as a ratio of the first (the baseline) measured in the same run, and the
// server's CPU time per request where the attack measured it (-server-pid). A label
// may name several rounds (label=a.json,b.json): its ratio is the median of
// each round's ratio to the baseline's round of the same number, so that a
// machine whose speed drifts during the run skews no row.
const compareUsage = `usage: tokenload compare [flags] label=report.json[,round2.json...] [label=report.json...]

Each argument names a report written by tokenload attack -json: label=path,
or label=path1,path2,... for rounds. The first label is the baseline.`

func compareCmd(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("tokenload compare", flag.ContinueOnError)
	markdown := fs.Bool("markdown", false, "print a Markdown table")
	missLatency := fs.Duration("sim-latency", 0, "simulator latency of the miss runs, to report the miss overhead")
	var missNames labelList
	fs.Var(&missNames, "miss", "label of a miss run, or label:upstream-label to measure its overhead over an attack -polyv run under the same load; repeat it or separate with commas")
	if err := cli.Parse(fs, args, stdout, compareUsage); err != nil {
		return err
	}
	if fs.NArg() == 0 {
		return &cli.UsageError{Msg: compareUsage}
	}
	var labels []string
	var runs [][]attackReport // per label, its rounds
	for _, a := range fs.Args() {
		label, paths, ok := strings.Cut(a, "=")
		if !ok {
			return fmt.Errorf("%q: want label=report.json", a)
		}
		var rounds []attackReport
		for _, path := range strings.Split(paths, ",") {
			b, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			var r attackReport
			if err := json.Unmarshal(b, &r); err != nil {
				return fmt.Errorf("%s: %v", path, err)
			}
			rounds = append(rounds, r)
		}
		if len(runs) > 0 && len(rounds) > len(runs[0]) {
			return fmt.Errorf("%s has %d rounds, the baseline only %d", label, len(rounds), len(runs[0]))
		}
		labels, runs = append(labels, label), append(runs, rounds)
	}
	for _, pair := range missNames {
		name, upstream, _ := strings.Cut(pair, ":")
		for _, l := range []string{name, upstream} {
			if l != "" && !slices.Contains(labels, l) {
				return fmt.Errorf("-miss %s: no report has the label %s", pair, l)
			}
		}
	}
	sep, start, end := "\t", "", ""
	if *markdown {
		sep, start, end = " | ", "| ", " |"
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	row := func(cells ...string) { fmt.Fprintln(tw, start+strings.Join(cells, sep)+end) }
	row("run", "rounds", "requests", "throughput/s", "vs "+labels[0], "server CPU/request", "CPU vs "+labels[0],
		"p50", "p90", "p99", "max", "non-200", "Polyv calls")
	if *markdown {
		row("---", "---:", "---:", "---:", "---:", "---:", "---:", "---:", "---:", "---:", "---:", "---:", "---:")
	}
	baseCPU := serverCPU(runs[0])
	for i, rounds := range runs {
		var requests uint64
		var non200 int
		var calls *int64
		var ratios, throughputs []float64
		for j, r := range rounds {
			requests += r.Requests
			throughputs = append(throughputs, r.Throughput)
			if base := runs[0][j].Throughput; base > 0 {
				ratios = append(ratios, r.Throughput/base)
			}
			for code, n := range r.StatusCodes {
				if code != "200" {
					non200 += n
				}
			}
			if n, ok := r.upstreamCalls(); ok {
				if calls == nil {
					calls = new(int64)
				}
				*calls += n
			}
		}
		ratio, callCell := "-", "-"
		if len(ratios) > 0 {
			ratio = fmt.Sprintf("%.2f", median(ratios))
		}
		if calls != nil {
			callCell = fmt.Sprint(*calls)
		}
		cpuCell, cpuRatio := "-", "-"
		if cpu := serverCPU(rounds); cpu > 0 {
			cpuCell = fmt.Sprintf("%.1f µs", cpu)
			if baseCPU > 0 {
				cpuRatio = fmt.Sprintf("%.2f", baseCPU/cpu)
			}
		}
		typical := medianRound(rounds) // latencies are the median round's
		row(labels[i], fmt.Sprint(len(rounds)), fmt.Sprint(requests), fmt.Sprintf("%.0f", median(throughputs)), ratio,
			cpuCell, cpuRatio, typical.LatencyP50, typical.LatencyP90, typical.LatencyP99, typical.LatencyMax, fmt.Sprint(non200), callCell)
	}
	tw.Flush()
	p50 := func(label string) float64 {
		var p50s []float64
		for _, r := range runs[slices.Index(labels, label)] {
			p50s = append(p50s, r.LatencyP50Ms)
		}
		return median(p50s)
	}
	if len(missNames) > 0 {
		fmt.Fprintln(stdout)
	}
	for _, pair := range missNames {
		name, upstream, _ := strings.Cut(pair, ":")
		miss, nominal := p50(name), float64(missLatency.Microseconds())/1000
		if upstream == "" {
			fmt.Fprintf(stdout, "%s overhead: median miss latency %.1f ms - simulator latency %.0f ms = %.1f ms\n",
				name, miss, nominal, miss-nominal)
			continue
		}
		own := p50(upstream)
		fmt.Fprintf(stdout, "%s overhead: median miss latency %.2f ms - the upstream's own %.2f ms (%s) = %.2f ms",
			name, miss, own, upstream, miss-own)
		if nominal > 0 {
			fmt.Fprintf(stdout, "; over its nominal %.0f ms: %.2f ms", nominal, miss-nominal)
		}
		fmt.Fprintln(stdout)
	}
	return nil
}

// serverCPU is the median over rounds of the server's CPU time per request,
// in µs; 0 when the rounds did not measure it.
func serverCPU(rounds []attackReport) float64 {
	var cpus []float64
	for _, r := range rounds {
		if r.ServerCPUPerRequest != nil {
			cpus = append(cpus, *r.ServerCPUPerRequest)
		}
	}
	if len(cpus) == 0 {
		return 0
	}
	return median(cpus)
}

// median of xs (not empty); the mean of the middle two for an even count.
func median(xs []float64) float64 {
	s := slices.Sorted(slices.Values(xs))
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// medianRound is the round of median throughput (the lower of the middle two).
func medianRound(rounds []attackReport) attackReport {
	s := slices.SortedFunc(slices.Values(rounds), func(a, b attackReport) int { return cmp.Compare(a.Throughput, b.Throughput) })
	return s[(len(s)-1)/2]
}

// labelList is -miss: repeatable, and comma-separated within one.
type labelList []string

func (l *labelList) String() string { return strings.Join(*l, ",") }
func (l *labelList) Set(s string) error {
	add := splitTargets(s)
	if len(add) == 0 {
		return errors.New("empty label")
	}
	*l = append(*l, add...)
	return nil
}

// upstreamCalls is the run's Polyv call count: the simulator's, or else
// tokencache's own metrics'.
func (r attackReport) upstreamCalls() (int64, bool) {
	switch {
	case r.UpstreamSim != nil:
		return *r.UpstreamSim, true
	case r.UpstreamProm != nil:
		return int64(*r.UpstreamProm), true
	}
	return 0, false
}
