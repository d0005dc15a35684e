package main

import (
	"encoding/json"
	"slices"
	"strconv"
	"strings"
	"sync"

	vegeta "github.com/tsenart/vegeta/v12/lib"

	"github.com/tokencache/tokencache/httpapi"
)

// allowedCodes is the API's error table: the codes each status may carry.
var allowedCodes = httpapi.ErrorTable

// checker inspects every response: a 200 must carry a non-empty token, an
// error must match the error table, and, when the Polyv simulator's /issued
// is known, every token must be one it issued for that very request.
type checker struct {
	mu          sync.Mutex
	cacheStatus map[string]int
	errorCodes  map[string]int
	tokens      map[string]map[string]bool // simulator key -> tokens seen
	empty       int
	offTable    int
	offTableEg  []string
	transport   int
	polyv       bool // the answers are Polyv's own (attack -polyv)
}

func newChecker() *checker {
	return &checker{cacheStatus: map[string]int{}, errorCodes: map[string]int{}, tokens: map[string]map[string]bool{}}
}

type chatBody struct {
	ChannelID string `json:"channelId"`
	UserID    string `json:"userId"`
	Role      string `json:"role"`
	Origin    string `json:"origin"`
	Token     string `json:"token"`
}

type errorBody struct {
	Error *struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

func (c *checker) add(r *vegeta.Result) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if cs := r.Headers.Get("Cache-Status"); cs != "" {
		c.cacheStatus[strings.TrimPrefix(cs, "tokencache; ")]++
	}
	switch {
	case r.Code == 0:
		c.transport++
	case r.Code == 200 && c.polyv:
		var b polyvReply
		if err := json.Unmarshal(r.Body, &b); err != nil || b.Code != 200 || b.Data.Token == "" {
			c.empty++
		}
	case r.Code == 200:
		var b chatBody
		if err := json.Unmarshal(r.Body, &b); err != nil || b.Token == "" {
			c.empty++
			return
		}
		k := identity{b.ChannelID, b.UserID, b.Role, b.Origin}.key()
		if c.tokens[k] == nil {
			c.tokens[k] = map[string]bool{}
		}
		c.tokens[k][b.Token] = true
	default:
		var b errorBody
		ok := json.Unmarshal(r.Body, &b) == nil && b.Error != nil && b.Error.Message != ""
		if ok {
			c.errorCodes[strconv.Itoa(int(r.Code))+" "+b.Error.Code]++
			ok = slices.Contains(allowedCodes[int(r.Code)], b.Error.Code)
			if r.Code == 503 && r.Headers.Get("Retry-After") == "" {
				ok = false
			}
		}
		if !ok {
			c.offTable++
			if len(c.offTableEg) < 5 {
				c.offTableEg = append(c.offTableEg, strconv.Itoa(int(r.Code))+" "+string(r.Body))
			}
		}
	}
}

// wrongTokens counts tokens the simulator never issued for their key.
func (c *checker) wrongTokens(issued map[string][]string) (wrong int, examples []string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for k, toks := range c.tokens {
		valid := map[string]bool{}
		for _, t := range issued[k] {
			valid[t] = true
		}
		for t := range toks {
			if !valid[t] {
				wrong++
				if len(examples) < 5 {
					examples = append(examples, k)
				}
			}
		}
	}
	return wrong, examples
}
