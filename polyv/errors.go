package polyv

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
)

// APIError is a reply in which Polyv's body code says the call failed.
type APIError struct {
	Endpoint   string // "get-chat-token" or "get-token"
	HTTPStatus int    // the HTTP status, for the record; decisions use Code
	Code       int    // the body's code
	Message    string // the body's message
}

func (e *APIError) Error() string {
	return fmt.Sprintf("polyv: %s: code %d: %s", e.Endpoint, e.Code, e.Message)
}

// RateLimited reports whether Polyv refused the call for exceeding its rate.
func (e *APIError) RateLimited() bool {
	return strings.Contains(strings.ToLower(e.Message), "qps exceeds")
}

// Misconfigured reports whether Polyv refused our credentials, signature or
// clock: nothing about the request itself, so no retry or cache helps.
func (e *APIError) Misconfigured() bool {
	if e.RateLimited() {
		return false
	}
	msg := strings.ToLower(e.Message)
	for _, m := range []string{"invalid timestamp", "appid is required", "application not found", "invalid signature"} {
		if strings.Contains(msg, m) {
			return true
		}
	}
	// Other 403s are permission problems of the account, not of the request.
	return e.Code == 403 && !strings.Contains(msg, "illegal channel")
}

// ServerError reports a Polyv-side failure (code 5xx), which may pass.
func (e *APIError) ServerError() bool {
	return e.Code >= 500 && !e.RateLimited()
}

// Rejected reports whether Polyv refused this request's own channel or params;
// the same request will be refused again.
func (e *APIError) Rejected() bool {
	return e.Code != 200 && e.Code < 500 && !e.RateLimited() && !e.Misconfigured()
}

// ChannelRejected reports whether Polyv refused the channel itself ("illegal
// channel id"): every request for that channel will be refused, whoever asks.
func (e *APIError) ChannelRejected() bool {
	return e.Rejected() && strings.Contains(strings.ToLower(e.Message), "illegal channel")
}

// MalformedError is a reply that is not Polyv's JSON envelope, such as a
// gateway's HTML page, or a success without a token.
type MalformedError struct {
	Endpoint   string
	HTTPStatus int
	Reason     string
}

func (e *MalformedError) Error() string {
	return fmt.Sprintf("polyv: %s: malformed reply (HTTP %d): %s", e.Endpoint, e.HTTPStatus, e.Reason)
}

// Kind sorts an error from this package into what a caller must do about it.
type Kind int

// The kinds of error, as returned by Classify.
const (
	KindNone          Kind = iota // no error
	KindRejected                  // the request's channel or params are wrong
	KindMisconfigured             // credentials, signature, appId or clock
	KindRateLimited               // Polyv's rate limit
	KindServer                    // Polyv 5xx
	KindMalformed                 // a reply that is not Polyv's JSON, or has no token
	KindTimeout                   // no answer in time
	KindNetwork                   // the connection failed
	KindCanceled                  // the caller gave up
	KindUnknown                   // anything else
)

var kindNames = [...]string{"none", "rejected", "misconfigured", "rate_limited", "server_error", "malformed", "timeout", "network", "canceled", "unknown"}

func (k Kind) String() string {
	if int(k) < len(kindNames) {
		return kindNames[k]
	}
	return "unknown"
}

// Classify returns the kind of err, looking through wrapping.
func Classify(err error) Kind {
	if err == nil {
		return KindNone
	}
	var apiErr *APIError
	if errors.As(err, &apiErr) {
		switch {
		case apiErr.RateLimited():
			return KindRateLimited
		case apiErr.Misconfigured():
			return KindMisconfigured
		case apiErr.ServerError():
			return KindServer
		default:
			return KindRejected
		}
	}
	var malformed *MalformedError
	if errors.As(err, &malformed) {
		return KindMalformed
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return KindTimeout
	}
	if errors.Is(err, context.Canceled) {
		return KindCanceled
	}
	var netErr net.Error
	if errors.As(err, &netErr) {
		if netErr.Timeout() {
			return KindTimeout
		}
		return KindNetwork
	}
	var opErr *net.OpError
	if errors.As(err, &opErr) {
		return KindNetwork
	}
	return KindUnknown
}

// Transient reports whether err may pass if the call is made again later:
// timeouts, network failures and server errors, including a malformed reply
// that came with an HTTP 5xx (a gateway's error page).
func Transient(err error) bool {
	switch Classify(err) {
	case KindServer, KindTimeout, KindNetwork:
		return true
	case KindMalformed:
		var m *MalformedError
		errors.As(err, &m)
		return m.HTTPStatus >= 500
	}
	return false
}
