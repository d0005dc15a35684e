package main

import (
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
)

// identity is one synthetic viewer's token request.
type identity struct {
	ChannelID string `json:"channelId"`
	UserID    string `json:"userId"`
	Role      string `json:"role"`
	Origin    string `json:"origin,omitempty"`
}

// key is the identity as the Polyv simulator names it in /stats and /issued.
func (id identity) key() string {
	return id.ChannelID + "/" + id.UserID + "/" + id.Role + "/" + id.Origin
}

// weightedRole is one entry of a role mix.
type weightedRole struct {
	role   string
	weight float64
}

// parseRoleMix reads "viewer=0.9,guest=0.08,teacher=0.02".
func parseRoleMix(s string) ([]weightedRole, error) {
	var mix []weightedRole
	var total float64
	for _, part := range strings.Split(s, ",") {
		name, w, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok {
			return nil, fmt.Errorf("role mix %q: want role=weight", part)
		}
		f, err := strconv.ParseFloat(w, 64)
		if err != nil || f < 0 {
			return nil, fmt.Errorf("role mix %q: weight must be a non-negative number", part)
		}
		mix = append(mix, weightedRole{name, f})
		total += f
	}
	if total <= 0 {
		return nil, fmt.Errorf("role mix %q: weights sum to 0", s)
	}
	for i := range mix {
		mix[i].weight /= total
	}
	return mix, nil
}

// workload picks the identity of each request: a known viewer chosen by
// popularity, or, with probability missRatio, a viewer never seen before.
// Known viewers are synthetic (channels × users), or a replayed pool.
type workload struct {
	channels, users int
	pool            []identity // the known viewers, when replaying a pool
	channelPrefix   string
	origin          string
	roles           []weightedRole
	missRatio       float64
	runID           string

	mu    sync.Mutex // rand.Zipf is not safe for concurrent use
	rng   *rand.Rand
	zipf  *rand.Zipf // nil for uniform popularity
	fresh atomic.Int64
}

func newWorkload(channels, users int, roles []weightedRole, popularity string, zipfS, missRatio float64, seed uint64) (*workload, error) {
	if channels < 1 || users < 1 {
		return nil, fmt.Errorf("channels and users must be at least 1")
	}
	if missRatio < 0 || missRatio > 1 {
		return nil, fmt.Errorf("miss ratio %v is not between 0 and 1", missRatio)
	}
	w := &workload{
		channels: channels, users: users, roles: roles, missRatio: missRatio, origin: "web", channelPrefix: "load",
		rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)), runID: strconv.FormatUint(seed, 36),
	}
	switch popularity {
	case "uniform":
	case "zipf":
		if zipfS <= 1 {
			return nil, fmt.Errorf("zipf exponent must be over 1, got %v", zipfS)
		}
		w.zipf = rand.NewZipf(w.rng, zipfS, 1, uint64(channels*users-1))
	default:
		return nil, fmt.Errorf("popularity %q: want zipf or uniform", popularity)
	}
	return w, nil
}

// replay makes w's known viewers those of pool (not empty) instead.
func (w *workload) replay(pool []identity, zipfS float64) {
	w.pool = pool
	if w.zipf != nil {
		w.zipf = rand.NewZipf(w.rng, zipfS, 1, uint64(len(pool)-1))
	}
}

// size is the number of known viewers.
func (w *workload) size() int {
	if w.pool != nil {
		return len(w.pool)
	}
	return w.channels * w.users
}

// known returns the n-th known viewer: users are spread over channels, and
// a viewer's role is fixed by its number, so it always asks for one key.
func (w *workload) known(n int) identity {
	if w.pool != nil {
		return w.pool[n]
	}
	ch, user := n%w.channels, n/w.channels
	return identity{
		ChannelID: fmt.Sprintf("%s-%d", w.channelPrefix, ch),
		UserID:    fmt.Sprintf("user-%d", user),
		Role:      w.roleOf(uint64(n)),
		Origin:    w.origin,
	}
}

// all lists every known viewer, for warming.
func (w *workload) all() []identity {
	out := make([]identity, w.size())
	for i := range out {
		out[i] = w.known(i)
	}
	return out
}

func (w *workload) roleOf(n uint64) string {
	h := fnv.New64a()
	fmt.Fprint(h, n)
	x := float64(h.Sum64()%1_000_000) / 1_000_000
	for _, r := range w.roles {
		if x < r.weight {
			return r.role
		}
		x -= r.weight
	}
	return w.roles[len(w.roles)-1].role
}

func (w *workload) next() identity {
	w.mu.Lock()
	miss := w.rng.Float64() < w.missRatio
	var n int
	switch {
	case w.zipf != nil && !miss:
		n = int(w.zipf.Uint64())
	default:
		n = w.rng.IntN(w.size())
	}
	w.mu.Unlock()
	if miss {
		// A new viewer in a known viewer's channel, with its role.
		id := w.known(n)
		id.UserID = fmt.Sprintf("fresh-%s-%d", w.runID, w.fresh.Add(1))
		return id
	}
	return w.known(n)
}
