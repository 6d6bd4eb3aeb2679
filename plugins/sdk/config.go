package sdk

import (
	"fmt"
	"net/url"
)

// ParseHTTPURL parses the http:// or https:// URL of a service, given under
// the sink's config.<key>. Its errors name the key and say what is wrong,
// but never echo the URL: it may hold a password.
func ParseHTTPURL(key, raw string) (*url.URL, error) {
	u, err := url.Parse(raw)
	switch {
	case err != nil:
		return nil, fmt.Errorf("config.%s: not a valid URL (check its port and escape special characters of a user or password with %%XX): write it like https://host:port", key)
	case u.Scheme != "http" && u.Scheme != "https":
		return nil, fmt.Errorf("config.%s: not an http:// or https:// URL: write it like https://host:port", key)
	case u.Host == "":
		return nil, fmt.Errorf("config.%s: the URL names no host: write it like https://host:port", key)
	}
	return u, nil
}
