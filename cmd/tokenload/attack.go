package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/tokencache/tokencache/internal/cli"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	vegeta "github.com/tsenart/vegeta/v12/lib"
)

// attackReport is what `tokenload attack` prints.
type attackReport struct {
	Name         string         `json:"name"`
	Requests     uint64         `json:"requests"`
	Duration     string         `json:"duration"`
	Throughput   float64        `json:"throughputPerSecond"`
	Rate         float64        `json:"ratePerSecond"`
	Success      float64        `json:"successRatio"`
	LatencyP50   string         `json:"latencyP50"`
	LatencyP90   string         `json:"latencyP90"`
	LatencyP99   string         `json:"latencyP99"`
	LatencyMax   string         `json:"latencyMax"`
	LatencyP50Ms float64        `json:"latencyP50Ms"`
	LatencyP99Ms float64        `json:"latencyP99Ms"`
	StatusCodes  map[string]int `json:"statusCodes"`
	CacheStatus  map[string]int `json:"cacheStatus"`
	ErrorCodes   map[string]int `json:"errorCodes"`
	Transport    int            `json:"transportErrors"`
	TransportEg  []string       `json:"transportErrorExamples,omitempty"`
	UpstreamSim  *int64         `json:"upstreamCallsSimulator,omitempty"`
	UpstreamProm *float64       `json:"upstreamCallsMetrics,omitempty"`
	EmptyTokens  int            `json:"emptyTokens"`
	WrongTokens  *int           `json:"wrongTokens,omitempty"`
	WrongEg      []string       `json:"wrongTokenExamples,omitempty"`
	OffTable     int            `json:"errorsOffTable"`
	OffTableEg   []string       `json:"errorsOffTableExamples,omitempty"`
	DistinctKeys int            `json:"distinctKeys"`
	// The answers fetched from Polyv during the run, by why: viewers the run
	// made up (-miss-ratio), and known viewers whose token was not cached.
	MissesNew   int64 `json:"missesNewIdentities"`
	MissesKnown int64 `json:"missesKnownIdentities"`
	// The CPU time the -server-pid process used per request, in µs.
	ServerCPUPerRequest *float64 `json:"serverCPUPerRequestUs,omitempty"`
	Seed                uint64   `json:"seed"`
	Failed              []string `json:"failedChecks,omitempty"`
}

func attackCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("tokenload attack", flag.ContinueOnError)
	var targets targetList
	fs.Var(&targets, "target", "tokencache base URL, used round-robin; repeat it or separate with commas (default http://127.0.0.1:8080)")
	key := fs.String("key", os.Getenv("TOKENLOAD_API_KEY"), "API key (env TOKENLOAD_API_KEY)")
	rate := fs.Int("rate", 200, "requests per second; 0 sends as fast as -max-workers allow")
	duration := fs.Duration("duration", 10*time.Second, "how long to attack")
	workers := fs.Uint64("workers", 16, "initial workers")
	maxWorkers := fs.Uint64("max-workers", 256, "most concurrent requests")
	timeout := fs.Duration("timeout", 30*time.Second, "per-request timeout")
	channels := fs.Int("channels", 10, "channels")
	users := fs.Int("users", 1000, "known users per channel")
	pool := fs.String("pool", "", "replay the known viewers of a pool file written by tokenload warm, instead of -channels and -users")
	roleMix := fs.String("roles", "viewer=0.95,guest=0.03,assistant=0.01,teacher=0.01", "role mix, role=weight,...")
	popularity := fs.String("popularity", "zipf", "how known users are picked: zipf or uniform")
	zipfS := fs.Float64("zipf-s", 1.1, "zipf exponent (over 1)")
	missRatio := fs.Float64("miss-ratio", 0, "fraction of requests for viewers the run makes up (forced misses); known viewers not warmed miss too, once each")
	seed := fs.Uint64("seed", 0, "random seed; 0 picks one, and the report prints it")
	stats := fs.String("stats", "", "Polyv simulator base URL (a trailing /stats is fine): count its calls and check every token against /issued; unreachable is fatal")
	maxErrorRatio := fs.Float64("max-error-ratio", 0, "exit non-zero when more than this fraction of requests fail")
	asJSON := fs.Bool("json", false, "print the report as JSON")
	output := fs.String("output", "", "write the results to this file in vegeta's binary format, for vegeta report and vegeta plot")
	name := fs.String("name", "tokenload", "attack name in the results")
	quiet := fs.Bool("quiet", false, "no live progress line")
	direct := fs.Bool("polyv", false, "attack the Polyv API (the simulator) at -target itself, signed with POLYV_APP_ID and POLYV_APP_SECRET from the environment: the upstream's own latency under the same load")
	metricsURLs := fs.String("metrics", "", "comma-separated /metrics URLs of the instances, for the upstream call count (default: each target's /metrics; give the admin listener's when TOKENCACHE_ADMIN_ADDR is set)")
	serverPID := fs.Int("server-pid", 0, "a local process, such as the server under test, whose CPU time per request to report (Linux)")
	if err := cli.Parse(fs, args, stdout, ""); err != nil {
		return err
	}
	if *seed == 0 {
		*seed = uint64(time.Now().UnixNano())
	}
	*stats = strings.TrimSuffix(strings.TrimRight(*stats, "/"), "/stats")
	roles, err := parseRoleMix(*roleMix)
	if err != nil {
		return err
	}
	wl, err := newWorkload(*channels, *users, roles, *popularity, *zipfS, *missRatio, *seed)
	if err != nil {
		return err
	}
	if *pool != "" {
		ids, err := readPoolIdentities(*pool)
		if err != nil {
			return fmt.Errorf("-pool: %w", err)
		}
		wl.replay(ids, *zipfS)
	}
	bases := targets.orDefault()
	if *rate < 0 || (*rate == 0 && *maxWorkers == 0) {
		return errors.New("-rate 0 needs -max-workers")
	}

	var enc vegeta.Encoder
	if *output != "" {
		f, err := os.OpenFile(*output, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600) // it holds live tokens
		if err != nil {
			return err
		}
		defer f.Close()
		enc = vegeta.NewEncoder(f)
	}

	counts := upstreamCounts{stats: *stats, metrics: splitTargets(*metricsURLs)}
	if len(counts.metrics) == 0 {
		for _, b := range bases {
			counts.metrics = append(counts.metrics, b+"/metrics")
		}
	}
	if err := counts.before(ctx, !*direct, stderr); err != nil {
		return err
	}

	var n atomic.Uint64
	next := func() (identity, string) { return wl.next(), bases[n.Add(1)%uint64(len(bases))] }
	targeter := tokenTargeter(next, *key)
	if *direct {
		if targeter, err = polyvTargeter(next); err != nil {
			return err
		}
	}
	attacker := vegeta.NewAttacker(vegeta.Workers(*workers), vegeta.MaxWorkers(*maxWorkers), vegeta.Timeout(*timeout),
		vegeta.KeepAlive(true), vegeta.Connections(int(*maxWorkers)), vegeta.MaxBody(64<<10))
	go func() { <-ctx.Done(); attacker.Stop() }()

	var metrics vegeta.Metrics
	chk := newChecker()
	chk.polyv = *direct
	var done, failed atomic.Int64
	stopProgress := progress(stderr, *quiet, func(elapsed time.Duration) string {
		n := done.Load()
		return fmt.Sprintf("attack %5.1fs  requests %d  rate %.0f/s  non-2xx %d", elapsed.Seconds(), n, float64(n)/elapsed.Seconds(), failed.Load())
	})
	var cpuBefore time.Duration
	if *serverPID != 0 {
		if cpuBefore, err = processCPU(*serverPID); err != nil {
			return fmt.Errorf("-server-pid: %w", err)
		}
	}
	transportEg := map[string]bool{}
	for res := range attacker.Attack(targeter, vegeta.Rate{Freq: *rate, Per: time.Second}, *duration, *name) {
		metrics.Add(res)
		chk.add(res)
		done.Add(1)
		if res.Code < 200 || res.Code > 299 {
			failed.Add(1)
		}
		if res.Code == 0 && res.Error != "" && len(transportEg) < 3 { // vegeta also sets Error to the status of non-2xx
			transportEg[res.Error] = true
		}
		if enc != nil {
			if err := enc.Encode(res); err != nil {
				return fmt.Errorf("write results: %w", err)
			}
		}
	}
	stopProgress()
	metrics.Close()
	var serverCPU *float64
	if *serverPID != 0 && metrics.Requests > 0 {
		after, err := processCPU(*serverPID)
		if err != nil {
			return fmt.Errorf("-server-pid after the attack: %w", err)
		}
		perRequest := float64((after - cpuBefore).Microseconds()) / float64(metrics.Requests)
		serverCPU = &perRequest
	}

	rep := newReport(*name, *seed, &metrics, chk, wl.fresh.Load())
	rep.ServerCPUPerRequest = serverCPU
	for e := range transportEg {
		rep.TransportEg = append(rep.TransportEg, e)
	}
	if err := counts.after(ctx, &rep, chk); err != nil {
		return err
	}
	rep.Failed = failedChecks(rep, *maxErrorRatio)
	if *asJSON {
		e := json.NewEncoder(stdout)
		e.SetIndent("", "  ")
		if err := e.Encode(rep); err != nil {
			return err
		}
	} else {
		printReport(stdout, rep)
	}
	if len(rep.Failed) > 0 {
		return fmt.Errorf("checks failed: %s", strings.Join(rep.Failed, "; "))
	}
	return nil
}

// newReport is the report of an attack's results, with freshMisses viewers
// made up by the run.
func newReport(name string, seed uint64, m *vegeta.Metrics, chk *checker, freshMisses int64) attackReport {
	rep := attackReport{
		Name: name, Requests: m.Requests, Duration: m.Duration.Round(time.Millisecond).String(),
		Throughput: m.Throughput, Rate: m.Rate, Success: m.Success,
		LatencyP50: m.Latencies.P50.String(), LatencyP90: m.Latencies.P90.String(),
		LatencyP99: m.Latencies.P99.String(), LatencyMax: m.Latencies.Max.String(),
		LatencyP50Ms: ms(m.Latencies.P50), LatencyP99Ms: ms(m.Latencies.P99),
		StatusCodes: m.StatusCodes, CacheStatus: chk.cacheStatus, ErrorCodes: chk.errorCodes,
		Transport: chk.transport, EmptyTokens: chk.empty, OffTable: chk.offTable, OffTableEg: chk.offTableEg,
		DistinctKeys: len(chk.tokens), Seed: seed, MissesNew: freshMisses,
	}
	fetched := int64(chk.cacheStatus["fwd=miss; stored"] + chk.cacheStatus["fwd=miss; collapsed"])
	rep.MissesKnown = max(0, fetched-rep.MissesNew)
	return rep
}

// tokenTargeter asks tokencache for the chat token of each identity next
// gives, at the base URL it gives.
func tokenTargeter(next func() (identity, string), key string) vegeta.Targeter {
	return func(t *vegeta.Target) error {
		id, base := next()
		q := url.Values{"userId": {id.UserID}, "role": {id.Role}}
		if id.Origin != "" {
			q.Set("origin", id.Origin)
		}
		t.Method = http.MethodGet
		t.URL = base + "/v1/channels/" + url.PathEscape(id.ChannelID) + "/chat-token?" + q.Encode()
		t.Header = http.Header{"Authorization": {"Bearer " + key}}
		return nil
	}
}

// upstreamCounts counts the Polyv calls an attack caused, from the
// simulator's /stats (and checks every token against its /issued), and from
// tokencache's own metrics.
type upstreamCounts struct {
	stats   string   // the simulator's base URL, or none
	metrics []string // the instances' /metrics URLs

	simBefore  int64
	promBefore *float64
}

// before reads the counts before the attack. A simulator that cannot be
// read is an error: a check that cannot run must not look like one that
// passed. Metrics that cannot be read leave that count out, with a warning.
func (u *upstreamCounts) before(ctx context.Context, readMetrics bool, stderr io.Writer) error {
	if u.stats != "" {
		var err error
		if u.simBefore, err = simCalls(ctx, u.stats); err != nil {
			return fmt.Errorf("-stats %s: %w", u.stats, err)
		}
		if _, err := simIssued(ctx, u.stats); err != nil {
			return fmt.Errorf("-stats %s: %w", u.stats, err)
		}
	}
	if readMetrics {
		var err error
		if u.promBefore, err = upstreamFromMetrics(ctx, u.metrics); err != nil {
			fmt.Fprintf(stderr, "warning: the report leaves out tokencache's upstream call count: %v; when the metrics are on an admin listener, give its URL with -metrics\n", err)
		}
	}
	return nil
}

// after puts the attack's counts, and the tokens Polyv never issued, in rep.
func (u *upstreamCounts) after(ctx context.Context, rep *attackReport, chk *checker) error {
	if u.stats != "" {
		after, err := simCalls(ctx, u.stats)
		if err != nil {
			return fmt.Errorf("-stats %s after the attack: %w", u.stats, err)
		}
		n := after - u.simBefore
		rep.UpstreamSim = &n
		issued, err := simIssued(ctx, u.stats)
		if err != nil {
			return fmt.Errorf("-stats %s after the attack: %w", u.stats, err)
		}
		wrong, eg := chk.wrongTokens(issued)
		rep.WrongTokens, rep.WrongEg = &wrong, eg
	}
	if u.promBefore != nil {
		if after, _ := upstreamFromMetrics(ctx, u.metrics); after != nil {
			n := *after - *u.promBefore
			rep.UpstreamProm = &n
		}
	}
	return nil
}

// failedChecks names each check the attack failed.
func failedChecks(r attackReport, maxErrorRatio float64) []string {
	var failed []string
	if errRatio := 1 - r.Success; errRatio > maxErrorRatio {
		failed = append(failed, fmt.Sprintf("error ratio %.4f over -max-error-ratio %g", errRatio, maxErrorRatio))
	}
	if r.EmptyTokens > 0 {
		failed = append(failed, fmt.Sprintf("%d empty tokens", r.EmptyTokens))
	}
	if r.OffTable > 0 {
		failed = append(failed, fmt.Sprintf("%d errors off the error table", r.OffTable))
	}
	if r.WrongTokens != nil && *r.WrongTokens > 0 {
		failed = append(failed, fmt.Sprintf("%d tokens Polyv never issued for their key", *r.WrongTokens))
	}
	return failed
}

// targetList is -target: repeatable, and comma-separated within one.
type targetList []string

func (t *targetList) String() string { return strings.Join(*t, ",") }
func (t *targetList) Set(s string) error {
	add := splitTargets(s)
	if len(add) == 0 {
		return errors.New("empty target")
	}
	for i, a := range add {
		u, err := baseURL(a)
		if err != nil {
			return err
		}
		add[i] = u
	}
	*t = append(*t, add...)
	return nil
}

// baseURL checks a target: a URL such as http://127.0.0.1:8080, or a bare
// host:port, taken as http://host:port.
func baseURL(s string) (string, error) {
	if !strings.Contains(s, "://") {
		s = "http://" + s
	}
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return "", fmt.Errorf("%q is not a base URL such as http://127.0.0.1:8080", s)
	}
	return strings.TrimRight(s, "/"), nil
}

func (t targetList) orDefault() []string {
	if len(t) == 0 {
		return []string{"http://127.0.0.1:8080"}
	}
	return t
}

func printReport(w io.Writer, r attackReport) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "requests\t%d in %s (%.1f/s sent, %.1f/s succeeded)\n", r.Requests, r.Duration, r.Rate, r.Throughput)
	fmt.Fprintf(tw, "success\t%.2f%%\n", 100*r.Success)
	fmt.Fprintf(tw, "latency\tp50 %s  p90 %s  p99 %s  max %s\n", r.LatencyP50, r.LatencyP90, r.LatencyP99, r.LatencyMax)
	fmt.Fprintf(tw, "status codes\t%s\n", formatCounts(r.StatusCodes))
	fmt.Fprintf(tw, "Cache-Status\t%s\n", formatCounts(r.CacheStatus))
	if len(r.ErrorCodes) > 0 {
		fmt.Fprintf(tw, "error codes\t%s\n", formatCounts(r.ErrorCodes))
	}
	if r.Transport > 0 {
		fmt.Fprintf(tw, "transport errors\t%d %v\n", r.Transport, r.TransportEg)
	}
	if r.UpstreamSim != nil {
		fmt.Fprintf(tw, "upstream calls\t%d (Polyv simulator /stats)\n", *r.UpstreamSim)
	}
	if r.UpstreamProm != nil {
		fmt.Fprintf(tw, "upstream calls\t%.0f (tokencache_upstream_requests_total)\n", *r.UpstreamProm)
	}
	fmt.Fprintf(tw, "distinct keys\t%d\n", r.DistinctKeys)
	if r.Requests > 0 {
		fmt.Fprintf(tw, "misses\t%.1f%% new viewers (-miss-ratio), %.1f%% known viewers fetched for the first time (not warmed: run tokenload warm, then attack -pool)\n",
			100*float64(r.MissesNew)/float64(r.Requests), 100*float64(r.MissesKnown)/float64(r.Requests))
	}
	check := fmt.Sprintf("empty tokens %d, errors off the table %d", r.EmptyTokens, r.OffTable)
	if r.WrongTokens != nil {
		check += fmt.Sprintf(", tokens Polyv never issued for their key %d", *r.WrongTokens)
	}
	fmt.Fprintf(tw, "checks\t%s\n", check)
	fmt.Fprintf(tw, "seed\t%d (rerun the same mix with -seed %d)\n", r.Seed, r.Seed)
	for _, eg := range r.OffTableEg {
		fmt.Fprintf(tw, "  off the table\t%s\n", eg)
	}
	tw.Flush()
}

func formatCounts(m map[string]int) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s=%d", k, m[k])
	}
	if len(parts) == 0 {
		return "-"
	}
	return strings.Join(parts, "  ")
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func splitTargets(s string) []string {
	var out []string
	for _, t := range strings.Split(s, ",") {
		if t = strings.TrimRight(strings.TrimSpace(t), "/"); t != "" {
			out = append(out, t)
		}
	}
	return out
}

// progress prints line() on one terminal line every second until stopped.
func progress(w io.Writer, quiet bool, line func(time.Duration) string) (stop func()) {
	if quiet {
		return func() {}
	}
	start := time.Now()
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-done:
				fmt.Fprintf(w, "\r%s\n", line(time.Since(start)))
				return
			case <-t.C:
				fmt.Fprintf(w, "\r%s", line(time.Since(start)))
			}
		}
	}()
	return func() { close(done); <-finished }
}

var httpClient = &http.Client{Timeout: 10 * time.Second}

func getJSON(ctx context.Context, u string, v any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	resp, err := httpClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return fmt.Errorf("GET %s: %s", u, resp.Status)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

// simCalls is the simulator's count of chat-token calls.
func simCalls(ctx context.Context, base string) (int64, error) {
	if base == "" {
		return 0, errors.New("no simulator")
	}
	var st struct {
		Calls map[string]int64 `json:"calls"`
	}
	err := getJSON(ctx, strings.TrimRight(base, "/")+"/stats", &st)
	return st.Calls["get-chat-token"], err
}

func simIssued(ctx context.Context, base string) (map[string][]string, error) {
	var issued map[string][]string
	err := getJSON(ctx, strings.TrimRight(base, "/")+"/issued", &issued)
	return issued, err
}

// upstreamFromMetrics sums tokencache_upstream_requests_total over the
// instances' /metrics URLs; nil and why if any cannot be read.
func upstreamFromMetrics(ctx context.Context, urls []string) (*float64, error) {
	var sum float64
	for _, u := range urls {
		families, err := scrapeMetrics(ctx, u)
		if err != nil {
			return nil, err
		}
		f := families["tokencache_upstream_requests_total"]
		if f == nil {
			return nil, fmt.Errorf("%s has no tokencache_upstream_requests_total: not a tokencache instance's metrics", u)
		}
		for _, m := range f.GetMetric() {
			sum += m.GetCounter().GetValue()
		}
	}
	return &sum, nil
}

// scrapeMetrics reads the metric families at a /metrics URL.
func scrapeMetrics(ctx context.Context, u string) (map[string]*dto.MetricFamily, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	resp, err := httpClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s: %s", u, resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	families, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", u, err)
	}
	return families, nil
}

// gaugesAt reads unlabelled gauges from one scrape of a /metrics URL.
func gaugesAt(ctx context.Context, u string, names ...string) ([]float64, error) {
	families, err := scrapeMetrics(ctx, u)
	if err != nil {
		return nil, err
	}
	values := make([]float64, len(names))
	for i, name := range names {
		f := families[name]
		if f == nil || len(f.GetMetric()) == 0 {
			return nil, fmt.Errorf("%s has no %s", u, name)
		}
		values[i] = f.GetMetric()[0].GetGauge().GetValue()
	}
	return values, nil
}
