package clickhousetest

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"

	"github.com/pgtrail/pgtrail/test/tlstest"
)

var openSSLServer = regexp.MustCompile(`(?s)(<openSSL>\s*<server>).*?(</server>)`)

// serveTLS makes the certificates and sets the config's TLS server section
// to them, with client certificates required (verificationMode strict).
func (s *Server) serveTLS(cfg string) (string, error) {
	dir := filepath.Join(s.proc.Dir, "tls")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("create %s: %w", dir, err)
	}
	certs, err := tlstest.Write(dir)
	if err != nil {
		return "", err
	}
	s.certs = certs
	if !openSSLServer.MatchString(cfg) {
		return "", fmt.Errorf("%s/config.xml has no <openSSL><server> section", configDir)
	}
	server := fmt.Sprintf(`
            <certificateFile>%s</certificateFile>
            <privateKeyFile>%s</privateKeyFile>
            <caConfig>%s</caConfig>
            <verificationMode>strict</verificationMode>
            <loadDefaultCAFile>false</loadDefaultCAFile>
            <cacheSessions>true</cacheSessions>
            <disableProtocols>sslv2,sslv3</disableProtocols>
            <preferServerCiphers>true</preferServerCiphers>
        `, certs.ServerCert, certs.ServerKey, certs.CAFile)
	return openSSLServer.ReplaceAllString(cfg, "${1}"+server+"${2}"), nil
}
