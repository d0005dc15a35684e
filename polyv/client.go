// Package polyv is a client for Polyv's live chat-token API: it signs requests
// as Polyv does, retries only what may pass, and turns every reply into a
// token or a typed error.
package polyv

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// TokenValidity is how long Polyv says a chat token is valid after issue.
const TokenValidity = 6 * time.Hour

// The endpoints, named as in errors and metrics.
const (
	EndpointChatToken    = "get-chat-token"
	EndpointChannelToken = "get-token"
)

// ChatTokenPath is get-chat-token's path under the base URL.
const ChatTokenPath = "/live/v3/channel/common/get-chat-token"

const (
	channelTokenPath = "/live/v3/channel/common/get-token"
	maxReplyBytes    = 1 << 20
)

// Options configures a Client. Zero fields take the defaults noted.
type Options struct {
	AppID     string // required
	AppSecret Secret // required
	// BaseURL defaults to DefaultBaseURL.
	BaseURL string
	// SignMethod defaults to DefaultSignMethod.
	SignMethod SignMethod
	// HTTPClient defaults to a client with a pooled transport of its own.
	HTTPClient *http.Client
	// Timeout bounds each attempt; it defaults to DefaultTimeout.
	Timeout time.Duration
	// Now is the clock for timestamps and issue times; it defaults to time.Now.
	Now func() time.Time
	// Retry defaults to DefaultRetry.
	Retry *RetryPolicy
}

// RetryPolicy says how transient failures are retried: full-jitter
// exponential backoff, never past the caller's deadline.
type RetryPolicy struct {
	MaxAttempts int           // attempts in all, at least 1
	BaseDelay   time.Duration // the first backoff's upper bound
	MaxDelay    time.Duration // the cap of any one backoff
}

// DefaultRetry makes up to 3 attempts, backing off up to 100ms, then 200ms.
var DefaultRetry = RetryPolicy{MaxAttempts: 3, BaseDelay: 100 * time.Millisecond, MaxDelay: 2 * time.Second}

// NoRetry makes a single attempt.
var NoRetry = RetryPolicy{MaxAttempts: 1}

// ChatTokenRequest names whose chat token to get. Origin is optional.
type ChatTokenRequest struct {
	ChannelID string
	UserID    string
	Role      string
	Origin    string
}

// Roles lists the roles Polyv accepts.
var Roles = []string{"teacher", "admin", "guest", "assistant", "viewer"}

// ChatToken is the data of a get-chat-token reply. The token and
// mediaChannelKey are credentials: do not log them.
type ChatToken struct {
	Token            string
	MediaChannelKey  string
	RoomID           string
	ChildRoomEnabled string
	ChatAPIDomain    string
	ChatDomain       string
	// IssuedAt is taken just before the request was sent, so that
	// IssuedAt+TokenValidity is never later than Polyv's own expiry.
	IssuedAt time.Time
}

// ChannelToken is the data of the old get-token reply.
type ChannelToken struct {
	Token           string
	MediaChannelKey string
	IssuedAt        time.Time
}

// Client calls Polyv. It is safe for concurrent use.
type Client struct {
	appID   string
	secret  Secret
	baseURL string
	method  SignMethod
	http    *http.Client
	timeout time.Duration
	now     func() time.Time
	retry   RetryPolicy
}

// The defaults of Options' fields, for callers that show or restate them.
const (
	DefaultBaseURL    = "https://api.polyv.net"
	DefaultSignMethod = SignMD5
	DefaultTimeout    = 5 * time.Second
)

// ValidBaseURL reports whether s can be a BaseURL: http:// or https://.
func ValidBaseURL(s string) bool {
	return strings.HasPrefix(s, "http://") || strings.HasPrefix(s, "https://")
}

// New returns a Client, or an error naming every missing or invalid option.
func New(opts Options) (*Client, error) {
	var problems []string
	if strings.TrimSpace(opts.AppID) == "" {
		problems = append(problems, "AppID is required")
	}
	if strings.TrimSpace(string(opts.AppSecret)) == "" {
		problems = append(problems, "AppSecret is required")
	}
	c := &Client{
		appID:   opts.AppID,
		secret:  opts.AppSecret,
		baseURL: strings.TrimRight(opts.BaseURL, "/"),
		method:  opts.SignMethod,
		http:    opts.HTTPClient,
		timeout: opts.Timeout,
		now:     opts.Now,
		retry:   DefaultRetry,
	}
	if c.baseURL == "" {
		c.baseURL = DefaultBaseURL
	}
	if !ValidBaseURL(c.baseURL) {
		problems = append(problems, "BaseURL must start with http:// or https://")
	}
	if c.method == "" {
		c.method = DefaultSignMethod
	}
	if !c.method.Valid() {
		problems = append(problems, fmt.Sprintf("SignMethod %q is not MD5 or SHA256", string(c.method)))
	}
	if c.http == nil {
		c.http = &http.Client{Transport: NewTransport()}
	}
	if c.timeout <= 0 {
		c.timeout = DefaultTimeout
	}
	if c.now == nil {
		c.now = time.Now
	}
	if opts.Retry != nil {
		c.retry = *opts.Retry
	}
	if c.retry.MaxAttempts < 1 {
		c.retry.MaxAttempts = 1
	}
	if len(problems) > 0 {
		return nil, errors.New("polyv: " + strings.Join(problems, "; "))
	}
	return c, nil
}

// NewTransport returns an HTTP transport tuned for many calls to one host:
// kept-alive connections, enough of them idle per host, and bounded dials.
func NewTransport() *http.Transport {
	return &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: 3 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:          256,
		MaxIdleConnsPerHost:   64,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   3 * time.Second,
		ResponseHeaderTimeout: 10 * time.Second,
		ForceAttemptHTTP2:     true,
	}
}

// Format prints the client without its secret, whatever the verb.
func (c Client) Format(f fmt.State, _ rune) {
	fmt.Fprintf(f, "polyv.Client{appID: %s, baseURL: %s, signMethod: %s, secret: %s}", c.appID, c.baseURL, c.method, redacted)
}

// ChatToken gets a chat token from get-chat-token.
func (c *Client) ChatToken(ctx context.Context, req ChatTokenRequest) (ChatToken, error) {
	params := map[string]string{
		"channelId": req.ChannelID,
		"userId":    req.UserID,
		"role":      req.Role,
		"origin":    req.Origin,
	}
	data, issued, err := c.call(ctx, EndpointChatToken, ChatTokenPath, params)
	if err != nil {
		return ChatToken{}, err
	}
	return ChatToken{
		Token:            data.Token,
		MediaChannelKey:  data.MediaChannelKey,
		RoomID:           string(data.RoomID),
		ChildRoomEnabled: data.ChildRoomEnabled,
		ChatAPIDomain:    data.ChatAPIDomain,
		ChatDomain:       data.ChatDomain,
		IssuedAt:         issued,
	}, nil
}

// ChannelToken gets a channel's token from the old get-token endpoint.
func (c *Client) ChannelToken(ctx context.Context, channelID string) (ChannelToken, error) {
	data, issued, err := c.call(ctx, EndpointChannelToken, channelTokenPath, map[string]string{"channelId": channelID})
	if err != nil {
		return ChannelToken{}, err
	}
	return ChannelToken{Token: data.Token, MediaChannelKey: data.MediaChannelKey, IssuedAt: issued}, nil
}

// call makes attempts until one succeeds, a failure is not transient, the
// attempts run out or the next backoff would pass ctx's deadline.
func (c *Client) call(ctx context.Context, endpoint, path string, params map[string]string) (chatTokenData, time.Time, error) {
	for attempt := 1; ; attempt++ {
		issued := c.now()
		data, err := c.attempt(ctx, endpoint, path, params, issued)
		if err == nil {
			return data, issued, nil
		}
		if attempt >= c.retry.MaxAttempts || !Transient(err) || ctx.Err() != nil {
			return chatTokenData{}, time.Time{}, err
		}
		delay := c.backoff(attempt)
		if deadline, ok := ctx.Deadline(); ok && time.Until(deadline) < delay {
			return chatTokenData{}, time.Time{}, err
		}
		select {
		case <-ctx.Done():
			return chatTokenData{}, time.Time{}, err
		case <-time.After(delay):
		}
	}
}

// backoff is a full-jitter delay before attempt n+1.
func (c *Client) backoff(n int) time.Duration {
	ceiling := c.retry.BaseDelay << (n - 1)
	if ceiling <= 0 || (c.retry.MaxDelay > 0 && ceiling > c.retry.MaxDelay) {
		ceiling = c.retry.MaxDelay
	}
	if ceiling <= 0 {
		return 0
	}
	return rand.N(ceiling) + 1
}

// attempt sends one signed request with a fresh timestamp.
func (c *Client) attempt(ctx context.Context, endpoint, path string, params map[string]string, now time.Time) (chatTokenData, error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()

	all := make(map[string]string, len(params)+2)
	for k, v := range params {
		all[k] = v
	}
	all["appId"] = c.appID
	all["timestamp"] = strconv.FormatInt(now.UnixMilli(), 10)
	form := SignedForm(all, c.secret.Reveal(), c.method)

	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.baseURL+path, strings.NewReader(form.Encode()))
	if err != nil {
		return chatTokenData{}, fmt.Errorf("polyv: %s: build request: %w", endpoint, err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")

	resp, err := c.http.Do(req)
	if err != nil {
		return chatTokenData{}, fmt.Errorf("polyv: %s: %w", endpoint, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxReplyBytes))
	if err != nil {
		return chatTokenData{}, fmt.Errorf("polyv: %s: read reply: %w", endpoint, err)
	}
	return decodeReply(endpoint, resp.StatusCode, body)
}
