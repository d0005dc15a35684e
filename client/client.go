// Package client is the Go client of tokencache, for the app servers that
// hand Polyv chat tokens to viewers. It builds the requests, sends the
// caller's deadline, decodes answers into typed values and errors, honours
// Retry-After, and can keep tokens in memory so that asking twice for the
// same viewer calls tokencache once.
//
// It imports only the standard library and golang.org/x/sync.
package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sync/singleflight"
)

// Options configures a Client. Zero fields take the defaults noted.
type Options struct {
	// HTTPClient sends the requests; it defaults to a client with a 30s
	// timeout. The caller's context bounds each call too.
	HTTPClient *http.Client
	// CacheSize, when positive, keeps up to that many chat tokens in memory
	// until ExpiryMargin before they expire.
	CacheSize int
	// ExpiryMargin is how long before expiresAt a cached token is dropped;
	// it defaults to 10 minutes.
	ExpiryMargin time.Duration
	// MaxRetries bounds the retries of a call refused with 503 and a
	// Retry-After that fits in the caller's deadline; it defaults to 2, and
	// a negative value turns retries off.
	MaxRetries int
}

// Client calls one tokencache service. It is safe for concurrent use.
type Client struct {
	base  string
	key   string
	http  *http.Client
	opts  Options
	cache *tokenCache // nil without CacheSize
	group singleflight.Group
}

// New returns a client of the tokencache at baseURL (such as
// "https://tokencache.internal:8080") that sends apiKey.
func New(baseURL, apiKey string, opts Options) (*Client, error) {
	u, err := url.Parse(baseURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("client: base URL must be http(s)://host[:port], have %q", baseURL)
	}
	if apiKey == "" {
		return nil, errors.New("client: an API key is required")
	}
	if opts.HTTPClient == nil {
		opts.HTTPClient = &http.Client{Timeout: 30 * time.Second}
	}
	if opts.ExpiryMargin <= 0 {
		opts.ExpiryMargin = 10 * time.Minute
	}
	if opts.MaxRetries == 0 {
		opts.MaxRetries = 2
	}
	c := &Client{base: strings.TrimRight(baseURL, "/"), key: apiKey, http: opts.HTTPClient, opts: opts}
	if opts.CacheSize > 0 {
		c.cache = newTokenCache(opts.CacheSize)
	}
	return c, nil
}

// ChatTokenRequest names one viewer's token.
type ChatTokenRequest struct {
	ChannelID string
	UserID    string
	Role      string // teacher, admin, guest, assistant or viewer
	Origin    string // optional: web, client, app, ...
}

// ChatToken is a chat token as tokencache serves it.
type ChatToken struct {
	ChannelID        string    `json:"channelId"`
	UserID           string    `json:"userId"`
	Role             string    `json:"role"`
	Origin           string    `json:"origin"`
	Token            string    `json:"token"`
	MediaChannelKey  string    `json:"mediaChannelKey"`
	RoomID           string    `json:"roomId"`
	ChildRoomEnabled string    `json:"childRoomEnabled"`
	ChatAPIDomain    string    `json:"chatApiDomain"`
	ChatDomain       string    `json:"chatDomain"`
	IssuedAt         time.Time `json:"issuedAt"`
	ExpiresAt        time.Time `json:"expiresAt"`
}

// ChannelToken is a channel's old token (get-token).
type ChannelToken struct {
	ChannelID       string    `json:"channelId"`
	Token           string    `json:"token"`
	MediaChannelKey string    `json:"mediaChannelKey"`
	IssuedAt        time.Time `json:"issuedAt"`
	ExpiresAt       time.Time `json:"expiresAt"`
}

// ChatToken returns req's chat token, from memory when the client keeps
// tokens and has a fresh one.
func (c *Client) ChatToken(ctx context.Context, req ChatTokenRequest) (ChatToken, error) {
	key := cacheKey(req)
	if c.cache != nil {
		if t, ok := c.cache.get(key, time.Now()); ok {
			return t, nil
		}
	}
	fetch := func(ctx context.Context) (ChatToken, error) {
		var g generation
		if c.cache != nil {
			g = c.cache.gen(key)
		}
		var t ChatToken
		err := c.do(ctx, http.MethodGet, chatPath(req.ChannelID)+"?"+chatQuery(req), nil, &t)
		if err == nil && c.cache != nil {
			c.cache.putIf(key, t, t.ExpiresAt.Add(-c.opts.ExpiryMargin), g)
		}
		return t, err
	}
	// Concurrent asks for one viewer share one call. It runs detached from
	// the first caller's cancellation, but under its deadline, which it sends
	// to the server; a caller with a longer deadline whose shared call ran
	// out of time asks again on its own.
	shared, cancel := context.WithoutCancel(ctx), context.CancelFunc(func() {})
	if d, ok := ctx.Deadline(); ok {
		shared, cancel = context.WithDeadline(shared, d)
	}
	ch := c.group.DoChan(key, func() (any, error) { defer cancel(); return fetch(shared) })
	select {
	case <-ctx.Done():
		return ChatToken{}, ctx.Err()
	case r := <-ch:
		if r.Err != nil && r.Shared && ctx.Err() == nil && outOfTime(r.Err) {
			return fetch(ctx)
		}
		if r.Err != nil {
			return ChatToken{}, r.Err
		}
		return r.Val.(ChatToken), nil
	}
}

// outOfTime reports an error caused by a deadline, the caller's or the
// server's.
func outOfTime(err error) bool {
	var e *Error
	return errors.Is(err, context.DeadlineExceeded) ||
		errors.As(err, &e) && (e.Code == CodeUpstreamTimeout || e.Code == CodeUpstreamUnavailable)
}

// DeleteChatToken drops req's token from tokencache (and from this client's
// memory); it succeeds when there was none.
func (c *Client) DeleteChatToken(ctx context.Context, req ChatTokenRequest) error {
	key := cacheKey(req)
	forget := func() {
		c.group.Forget(key) // the next ask starts its own call
		if c.cache != nil {
			c.cache.remove(key)
		}
	}
	forget()
	err := c.do(ctx, http.MethodDelete, chatPath(req.ChannelID)+"?"+chatQuery(req), nil, nil)
	// Again once the server has deleted: a fetch that raced the DELETE may
	// have brought the old token back.
	forget()
	return err
}

// ChannelToken returns channelID's old channel token.
func (c *Client) ChannelToken(ctx context.Context, channelID string) (ChannelToken, error) {
	var t ChannelToken
	err := c.do(ctx, http.MethodGet, "/v1/channels/"+url.PathEscape(channelID)+"/token", nil, &t)
	return t, err
}

// BulkItem is one viewer of a bulk call.
type BulkItem struct {
	UserID string `json:"userId"`
	Role   string `json:"role"`
	Origin string `json:"origin,omitempty"`
}

// BulkResult is one item's answer: a token, or Err.
type BulkResult struct {
	Token ChatToken
	Err   error // *Error
}

// maxBulk is the most items tokencache takes in one bulk call, and
// maxBulkBytes the most body it reads by default (1 MiB), less room for the
// envelope.
const (
	maxBulk      = 1000
	maxBulkBytes = 1<<20 - 1024
)

// bulkChunks splits items into calls of at most maxBulk items and
// maxBulkBytes of JSON each, in order.
func bulkChunks(items []BulkItem) [][]BulkItem {
	var chunks [][]BulkItem
	start, size := 0, 0
	for i, it := range items {
		b, _ := json.Marshal(it) // strings cannot fail
		n := len(b) + 1          // and a comma
		if i > start && (i-start == maxBulk || size+n > maxBulkBytes) {
			chunks = append(chunks, items[start:i])
			start, size = i, 0
		}
		size += n
	}
	if start < len(items) {
		chunks = append(chunks, items[start:])
	}
	return chunks
}

// ChatTokens gets or prefetches the tokens of many viewers of one channel,
// in calls of up to 1000 items. Results are in the order of items; an item
// that fails has Err set and does not fail the others. The error is for the
// call itself (a refused channel, or tokencache unreachable).
func (c *Client) ChatTokens(ctx context.Context, channelID string, items []BulkItem) ([]BulkResult, error) {
	results := make([]BulkResult, 0, len(items))
	for _, chunk := range bulkChunks(items) {
		gens := map[string]generation{} // as each item's fetch begins
		if c.cache != nil {
			for _, it := range chunk {
				key := cacheKey(ChatTokenRequest{ChannelID: channelID, UserID: it.UserID, Role: it.Role, Origin: it.Origin})
				gens[key] = c.cache.gen(key)
			}
		}
		body, _ := json.Marshal(map[string][]BulkItem{"requests": chunk})
		var out struct {
			Results []json.RawMessage `json:"results"`
		}
		if err := c.do(ctx, http.MethodPost, "/v1/channels/"+url.PathEscape(channelID)+"/chat-tokens", body, &out); err != nil {
			return nil, err
		}
		if len(out.Results) != len(chunk) {
			return nil, fmt.Errorf("client: %d results for %d items", len(out.Results), len(chunk))
		}
		for _, raw := range out.Results {
			var r struct {
				ChatToken
				Error *Error `json:"error"`
			}
			if err := json.Unmarshal(raw, &r); err != nil {
				return nil, fmt.Errorf("client: decoding a bulk result: %w", err)
			}
			if r.Error != nil {
				results = append(results, BulkResult{Err: r.Error})
				continue
			}
			results = append(results, BulkResult{Token: r.ChatToken})
			if c.cache != nil {
				key := cacheKey(ChatTokenRequest{ChannelID: channelID, UserID: r.UserID, Role: r.Role, Origin: r.Origin})
				c.cache.putIf(key, r.ChatToken, r.ExpiresAt.Add(-c.opts.ExpiryMargin), gens[key])
			}
		}
	}
	return results, nil
}

// answerMargin is how much sooner than the caller the server is asked to
// stop: a tenth of the time left, at most 250 ms.
func answerMargin(left time.Duration) time.Duration { return min(left/10, 250*time.Millisecond) }

// do sends one call, retrying a 503 whose Retry-After fits in ctx, and
// decodes a 2xx body into out.
func (c *Client) do(ctx context.Context, method, path string, body []byte, out any) error {
	for attempt := 0; ; attempt++ {
		err := c.once(ctx, method, path, body, out)
		var e *Error
		if !errors.As(err, &e) || e.Status != http.StatusServiceUnavailable || attempt >= c.opts.MaxRetries || e.RetryAfter <= 0 {
			return err
		}
		if d, ok := ctx.Deadline(); ok && time.Until(d) < e.RetryAfter {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(e.RetryAfter):
		}
	}
}

func (c *Client) once(ctx context.Context, method, path string, body []byte, out any) error {
	var r io.Reader
	if body != nil {
		r = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, r)
	if err != nil {
		return fmt.Errorf("client: %w", err)
	}
	req.Header.Set("Authorization", "Bearer "+c.key)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if d, ok := ctx.Deadline(); ok {
		// Tell the server how long we wait, less a margin for its answer to
		// travel back, so it stops before we do and we see why.
		left := time.Until(d)
		req.Header.Set("Request-Timeout", strconv.FormatFloat(max((left-answerMargin(left)).Seconds(), 0.001), 'f', 3, 64))
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("client: %s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("client: reading the answer: %w", err)
	}
	if resp.StatusCode >= 300 {
		return decodeError(resp, b)
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("client: decoding the answer: %w", err)
	}
	return nil
}

func chatPath(channelID string) string {
	return "/v1/channels/" + url.PathEscape(channelID) + "/chat-token"
}

func chatQuery(r ChatTokenRequest) string {
	q := url.Values{"userId": {r.UserID}, "role": {r.Role}}
	if r.Origin != "" {
		q.Set("origin", r.Origin)
	}
	return q.Encode()
}

// cacheKey is injective: query-escaping never leaves a '&' in a field.
func cacheKey(r ChatTokenRequest) string {
	return url.QueryEscape(r.ChannelID) + "&" + chatQuery(r)
}
