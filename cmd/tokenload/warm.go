package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tokencache/tokencache/internal/cli"
)

// poolEntry is one line of the token pool: the chat-token body as served.
type poolEntry struct {
	identity
	Token     string    `json:"token"`
	ExpiresAt time.Time `json:"expiresAt"`
}

// failure is one identity that could not be warmed.
type failure struct {
	identity
	Status int             `json:"status"`
	Error  json.RawMessage `json:"error"`
}

func warmCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("tokenload warm", flag.ContinueOnError)
	target := fs.String("target", "http://127.0.0.1:8080", "tokencache base URL")
	key := fs.String("key", os.Getenv("TOKENLOAD_API_KEY"), "API key (env TOKENLOAD_API_KEY)")
	input := fs.String("input", "", "identities to warm: JSONL {channelId,userId,role,origin} or CSV channelId,userId,role[,origin]; - for stdin")
	generate := fs.Int("generate", 0, "instead of -input, generate this many synthetic users (as attack picks them)")
	channels := fs.Int("channels", 10, "channels of generated users")
	roleMix := fs.String("roles", "viewer=0.95,guest=0.03,assistant=0.01,teacher=0.01", "role mix of generated users")
	out := fs.String("out", "pool.jsonl", "token pool to append to (JSONL); entries still valid are skipped on a rerun")
	minRemaining := fs.Duration("min-remaining", 30*time.Minute, "a pooled token with less validity left is fetched again")
	batch := fs.Int("batch", 1000, "identities per bulk request (at most 1000)")
	metricsURL := fs.String("metrics", "", "the server's /metrics URL, to read its Polyv rate for the time estimate (default: the target's /metrics; give the admin listener's when TOKENCACHE_ADMIN_ADDR is set)")
	concurrency := fs.Int("concurrency", 2, "bulk requests in flight")
	quiet := fs.Bool("quiet", false, "no progress bar")
	if err := cli.Parse(fs, args, stdout, ""); err != nil {
		return err
	}
	base, err := baseURL(*target)
	if err != nil {
		return &cli.UsageError{Msg: "-target: " + err.Error()}
	}
	*target = base
	if *batch < 1 || *batch > 1000 {
		return errors.New("-batch must be 1 to 1000")
	}
	ids, err := warmIdentities(*input, *generate, *channels, *roleMix)
	if err != nil {
		return err
	}
	warm, err := readPool(*out, time.Now().Add(*minRemaining))
	if err != nil {
		return err
	}
	var todo []identity
	for _, id := range ids {
		if !warm[id.key()] {
			todo = append(todo, id)
		}
	}
	fmt.Fprintf(stderr, "warm: %d identities, %d already in %s, %d to fetch\n", len(ids), len(ids)-len(todo), *out, len(todo))
	if len(todo) == 0 {
		fmt.Fprintf(stdout, "warmed 0, failed 0, skipped %d (already warm); pool: %s\n", len(ids), *out)
		return nil
	}
	if *metricsURL == "" {
		*metricsURL = *target + "/metrics"
	}
	fmt.Fprintln(stderr, "warm: "+estimate(ctx, *metricsURL, len(todo)))

	f, err := os.OpenFile(*out, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	defer f.Close()
	w := bufio.NewWriter(f)
	defer w.Flush()

	// One identity first: a wrong key or an unreachable target is one
	// clear error, not one per identity.
	first, firstFails, err := postBulk(ctx, *target, *key, todo[:1])
	if err != nil {
		return fmt.Errorf("the first request failed, so nothing more was sent: %w", err)
	}
	for _, l := range first {
		w.Write(l)
		w.WriteByte('\n')
	}
	var (
		mu       sync.Mutex
		failures = firstFails
		ok, bad  atomic.Int64
		wg       sync.WaitGroup
	)
	ok.Add(int64(len(first)))
	bad.Add(int64(len(firstFails)))
	stop := progress(stderr, *quiet, func(elapsed time.Duration) string {
		return progressBar(int(ok.Load()+bad.Load()), len(todo), int(ok.Load()), int(bad.Load()), elapsed)
	})
	sem := make(chan struct{}, max(1, *concurrency))
	for _, b := range groupBatches(todo[1:], *batch) {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break // stopped: what is not sent is not tried, not failed
		}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			lines, fails, err := postBulk(ctx, *target, *key, b)
			mu.Lock()
			defer mu.Unlock()
			if err != nil && ctx.Err() == nil {
				for _, id := range b {
					fails = append(fails, failure{identity: id, Error: json.RawMessage(strconvQuote(err.Error()))})
				}
			}
			for _, l := range lines {
				w.Write(l)
				w.WriteByte('\n')
			}
			failures = append(failures, fails...)
			ok.Add(int64(len(lines)))
			bad.Add(int64(len(fails)))
		}()
	}
	wg.Wait()
	stop()

	fmt.Fprintf(stdout, "warmed %d, failed %d, skipped %d (already warm); pool: %s\n", ok.Load(), bad.Load(), len(ids)-len(todo), *out)
	if ctx.Err() != nil {
		left := len(todo) - int(ok.Load()+bad.Load())
		return fmt.Errorf("stopped: %d warmed are in %s; %d not tried (a rerun continues with them)", ok.Load(), *out, left)
	}
	if len(failures) == 0 {
		return nil
	}
	failPath := strings.TrimSuffix(*out, ".jsonl") + ".failures.jsonl"
	var buf bytes.Buffer
	for _, fl := range failures {
		b, _ := json.Marshal(fl)
		buf.Write(append(b, '\n'))
		fmt.Fprintf(stderr, "FAILED %s: %d %s\n", fl.key(), fl.Status, fl.Error)
	}
	if err := os.WriteFile(failPath, buf.Bytes(), 0o600); err != nil {
		return err
	}
	return fmt.Errorf("%d of %d identities failed; listed above and in %s (a rerun retries them)", len(failures), len(todo), failPath)
}

func strconvQuote(s string) string { b, _ := json.Marshal(s); return string(b) }

// progressBar is warm's live line: how far, how fast, how long yet.
func progressBar(done, total, ok, bad int, elapsed time.Duration) string {
	const width = 30
	filled := width
	if total > 0 {
		filled = done * width / total
	}
	line := fmt.Sprintf("warm [%s%s] %d/%d ok %d failed %d", strings.Repeat("#", filled), strings.Repeat(".", width-filled), done, total, ok, bad)
	// The first identity goes alone (the key check): the rate means
	// something once a batch after it has come back.
	if perSecond := float64(done) / elapsed.Seconds(); done > 1 && elapsed > 0 {
		left := time.Duration(float64(total-done) / perSecond * float64(time.Second))
		line += fmt.Sprintf(" %.0f/s left %v", perSecond, left.Round(time.Second))
	}
	return line
}

// estimate says how long fetching n tokens takes at the server's bulk
// rate, read from its metrics (the Polyv rate limit × the bulk share).
func estimate(ctx context.Context, metricsURL string, n int) string {
	g, err := gaugesAt(ctx, metricsURL, "tokencache_polyv_rate_limit", "tokencache_polyv_bulk_share")
	if err == nil && g[0]*g[1] <= 0 {
		err = fmt.Errorf("%s reports no Polyv rate for bulk", metricsURL)
	}
	if err != nil {
		// The server's defaults: 100/s, half of it for bulk.
		return fmt.Sprintf("cannot read the server's Polyv rate (%v); at the defaults (50/s for bulk) %d tokens take about %v; give -metrics when the metrics are on an admin listener",
			err, n, (time.Duration(n) * time.Second / 50).Round(time.Second))
	}
	rate, share := g[0], g[1]
	perSecond := rate * share
	took := time.Duration(float64(n) / perSecond * float64(time.Second))
	return fmt.Sprintf("%d tokens at the server's bulk rate (%.0f/s: POLYV_RATE_LIMIT %.0f × TOKENCACHE_BULK_SHARE %.2g) take about %v, less for tokens already cached",
		n, perSecond, rate, share, took.Round(time.Second))
}

// warmIdentities reads -input or generates users.
func warmIdentities(input string, generate, channels int, roleMix string) ([]identity, error) {
	if (input == "") == (generate == 0) {
		return nil, errors.New("give exactly one of -input and -generate")
	}
	if generate > 0 {
		roles, err := parseRoleMix(roleMix)
		if err != nil {
			return nil, err
		}
		wl, err := newWorkload(channels, max(1, (generate+channels-1)/channels), roles, "uniform", 0, 0, 1)
		if err != nil {
			return nil, err
		}
		return wl.all()[:generate], nil
	}
	var r io.Reader = os.Stdin
	if input != "-" {
		f, err := os.Open(input)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		r = f
	}
	return parseIdentities(r)
}

// parseIdentities reads JSONL or CSV lines; blank lines and # comments are skipped.
func parseIdentities(r io.Reader) ([]identity, error) {
	var ids []identity
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		var id identity
		if strings.HasPrefix(line, "{") {
			if err := json.Unmarshal([]byte(line), &id); err != nil {
				return nil, fmt.Errorf("line %d: %v", n, err)
			}
		} else {
			rec, err := csv.NewReader(strings.NewReader(line)).Read()
			if n == 1 && err == nil && len(rec) >= 3 && strings.EqualFold(rec[0], "channelId") {
				continue // a header row
			}
			if err != nil || len(rec) < 3 || len(rec) > 4 {
				return nil, fmt.Errorf("line %d: want channelId,userId,role[,origin]", n)
			}
			id = identity{ChannelID: rec[0], UserID: rec[1], Role: rec[2]}
			if len(rec) == 4 {
				id.Origin = rec[3]
			}
		}
		if id.ChannelID == "" || id.UserID == "" || id.Role == "" {
			return nil, fmt.Errorf("line %d: channelId, userId and role are required", n)
		}
		ids = append(ids, id)
	}
	return ids, sc.Err()
}

// readPool returns the keys of pooled tokens still valid at until. A line
// it cannot read (a run killed mid-write) only means that token is fetched
// again.
func readPool(path string, until time.Time) (map[string]bool, error) {
	warm := map[string]bool{}
	err := eachPoolLine(path, func(_ int, line []byte) error {
		var e poolEntry
		if json.Unmarshal(line, &e) == nil && e.Token != "" && e.ExpiresAt.After(until) {
			warm[e.key()] = true
		}
		return nil
	})
	if errors.Is(err, os.ErrNotExist) {
		return warm, nil
	}
	return warm, err
}

// readPoolIdentities returns the identities of a pool written by warm, each
// once, in file order.
func readPoolIdentities(path string) ([]identity, error) {
	var ids []identity
	seen := map[string]bool{}
	err := eachPoolLine(path, func(n int, line []byte) error {
		var e poolEntry
		if err := json.Unmarshal(line, &e); err != nil || e.ChannelID == "" || e.UserID == "" || e.Role == "" {
			return fmt.Errorf("%s line %d: not a pool entry written by tokenload warm", path, n)
		}
		if !seen[e.key()] {
			seen[e.key()] = true
			ids = append(ids, e.identity)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if len(ids) == 0 {
		return nil, fmt.Errorf("%s holds no identities: run tokenload warm first", path)
	}
	return ids, nil
}

// eachPoolLine calls fn with each line of the pool at path, numbered from 1,
// until fn fails.
func eachPoolLine(path string, fn func(n int, line []byte) error) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for n := 1; sc.Scan(); n++ {
		if err := fn(n, sc.Bytes()); err != nil {
			return err
		}
	}
	return sc.Err()
}

// groupBatches splits identities into per-channel batches of at most n.
func groupBatches(ids []identity, n int) [][]identity {
	byChannel := map[string][]identity{}
	var order []string
	for _, id := range ids {
		if _, ok := byChannel[id.ChannelID]; !ok {
			order = append(order, id.ChannelID)
		}
		byChannel[id.ChannelID] = append(byChannel[id.ChannelID], id)
	}
	var out [][]identity
	for _, ch := range order {
		list := byChannel[ch]
		for len(list) > 0 {
			k := min(n, len(list))
			out = append(out, list[:k])
			list = list[k:]
		}
	}
	return out
}

// postBulk fetches one batch and returns the pool lines and the failures.
func postBulk(ctx context.Context, target, key string, batch []identity) ([][]byte, []failure, error) {
	type item struct {
		UserID string `json:"userId"`
		Role   string `json:"role"`
		Origin string `json:"origin,omitempty"`
	}
	reqBody := struct {
		Requests []item `json:"requests"`
	}{}
	for _, id := range batch {
		reqBody.Requests = append(reqBody.Requests, item{id.UserID, id.Role, id.Origin})
	}
	b, _ := json.Marshal(reqBody)
	ctx, cancel := context.WithTimeout(ctx, 150*time.Second) // the server waits up to 120s for rate-limit slots
	defer cancel()
	u := strings.TrimRight(target, "/") + "/v1/channels/" + url.PathEscape(batch[0].ChannelID) + "/chat-tokens"
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, bytes.NewReader(b))
	if err != nil {
		return nil, nil, err
	}
	req.Header.Set("Authorization", "Bearer "+key)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, nil, fmt.Errorf("bulk request: %s: %s", resp.Status, bytes.TrimSpace(body))
	}
	var res struct {
		Results []json.RawMessage `json:"results"`
	}
	if err := json.Unmarshal(body, &res); err != nil || len(res.Results) != len(batch) {
		return nil, nil, fmt.Errorf("bulk reply has %d results for %d requests", len(res.Results), len(batch))
	}
	var lines [][]byte
	var fails []failure
	for i, raw := range res.Results {
		var r struct {
			Token string          `json:"token"`
			Error json.RawMessage `json:"error"`
		}
		_ = json.Unmarshal(raw, &r)
		if r.Token == "" {
			fails = append(fails, failure{identity: batch[i], Status: http.StatusOK, Error: r.Error})
			continue
		}
		lines = append(lines, raw)
	}
	return lines, fails, nil
}
