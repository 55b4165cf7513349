package config

import (
	"fmt"
	"net"
	"net/url"
	"regexp"
	"strings"
)

// awsRegion matches the names of AWS's regions in every partition, after
// the patterns of the AWS SDK's partition table (aws, aws-cn, aws-us-gov,
// the isolated partitions and the European sovereign cloud).
var awsRegion = regexp.MustCompile(`^(us|eu|ap|sa|ca|me|af|il|mx|cn|us-gov|us-iso|us-isob|us-isof|eu-isoe|eusc-de)-[a-z]+-[0-9]+$`)

// providerRegion is where one of the non-AWS regions that Verneuil knows
// by name lives: the region to sign requests for, and the endpoint.
type providerRegion struct {
	region, endpoint string
}

// providerRegions are the non-AWS region names that Verneuil's S3 client
// (rust-s3 0.28, through aws-region 0.23) resolves to a provider's
// endpoint: DigitalOcean Spaces, Yandex Object Storage and Wasabi.
var providerRegions = map[string]providerRegion{
	"nyc3":            {"nyc3", "https://nyc3.digitaloceanspaces.com"},
	"ams3":            {"ams3", "https://ams3.digitaloceanspaces.com"},
	"sgp1":            {"sgp1", "https://sgp1.digitaloceanspaces.com"},
	"fra1":            {"fra1", "https://fra1.digitaloceanspaces.com"},
	"yandex":          {"ru-central1", "https://storage.yandexcloud.net"},
	"ru-central1":     {"ru-central1", "https://storage.yandexcloud.net"},
	"wa-us-east-1":    {"us-east-1", "https://s3.us-east-1.wasabisys.com"},
	"wa-us-east-2":    {"us-east-2", "https://s3.us-east-2.wasabisys.com"},
	"wa-us-west-1":    {"us-west-1", "https://s3.us-west-1.wasabisys.com"},
	"wa-eu-central-1": {"eu-central-1", "https://s3.eu-central-1.wasabisys.com"},
}

// resolveRegion returns the region and endpoint that a region given
// without an endpoint stands for, as Verneuil reads it, or a message
// saying why it stands for none:
//
//   - an AWS region stays as it is, with no endpoint (the AWS SDK finds
//     it); Verneuil knows only the regions of its time by name, and
//     would send a newer one to https://<region>;
//   - a region of another provider that Verneuil knows by name is at
//     that provider's endpoint;
//   - "name.domain" is region "name" at https://domain;
//   - any other "name" is region "name" at https://name.
func resolveRegion(region string) (name, endpoint, msg string) {
	if awsRegion.MatchString(region) {
		return region, "", ""
	}
	if p, ok := providerRegions[region]; ok {
		return p.region, p.endpoint, ""
	}
	name, domain, dotted := strings.Cut(region, ".")
	if !dotted {
		domain = name
	}
	// The region stands for a URL here, so messages quote it as they
	// quote endpoints: without user information or query values.
	shown := strings.TrimPrefix(redactURL("https://"+region), "https://")
	if dotted && validRegion(name) {
		shown = name + "." + strings.TrimPrefix(redactURL("https://"+domain), "https://")
	}
	if !validRegion(name) {
		if dotted {
			return "", "", fmt.Sprintf(
				"invalid region %q: without an endpoint, \"name.domain\" is region \"name\" at https://domain, and %q is not a region name (letters, digits and '-')",
				shown, strings.TrimPrefix(redactURL("https://"+name), "https://"))
		}
		return "", "", fmt.Sprintf(
			"invalid region %q: want labels of letters, digits and '-' separated by '.', such as \"us-east-1\"", shown)
	}
	endpoint = "https://" + domain
	msg = checkEndpoint(endpoint)
	if msg == "" {
		if host := hostname(endpoint); !validRegion(host) && net.ParseIP(host) == nil {
			msg = fmt.Sprintf("%q is not a host name or an IP address", host)
		}
	}
	if msg != "" {
		return "", "", fmt.Sprintf(
			"invalid region %q: without an endpoint it stands for region %q at %s: %s",
			shown, name, redactURL(endpoint), msg)
	}
	return name, endpoint, ""
}

// hostname returns the host of endpoint, which checkEndpoint accepted.
func hostname(endpoint string) string {
	u, err := url.Parse(endpoint)
	if err != nil {
		return ""
	}
	return u.Hostname()
}
