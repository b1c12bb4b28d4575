#include "common/config/tls_config.h"

#include <fstream>
#include <string>

#include "common/config/json_config.h"
#include "gtest/gtest.h"

namespace poolside::config {
namespace {

v1::TlsConfig Tls(const std::string& json) {
  v1::TlsConfig tls;
  EXPECT_TRUE(ParseJsonConfig(json, &tls).ok()) << json;
  return tls;
}

std::string TempFile(const std::string& name) {
  const char* dir = std::getenv("TEST_TMPDIR");
  const std::string path = std::string(dir != nullptr ? dir : "/tmp") + "/" + name;
  std::ofstream(path) << "-----BEGIN CERTIFICATE-----\n";
  return path;
}

void ExpectInvalid(const v1::TlsConfig& tls, const std::string& mentions) {
  absl::Status s = ValidateServerTlsConfig(tls);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << tls.DebugString();
  EXPECT_NE(s.message().find(mentions), std::string::npos) << s;
}

TEST(TlsConfigTest, PlaintextMustBeExplicit) {
  ExpectInvalid(Tls("{}"), "server.tls.plaintext: true");
  EXPECT_TRUE(ValidateServerTlsConfig(Tls(R"({"plaintext": true})")).ok());
}

TEST(TlsConfigTest, RejectsContradictionsAndHalves) {
  const std::string cert = TempFile("cert.pem");
  ExpectInvalid(Tls(R"({"plaintext": true, "certFile": ")" + cert + R"("})"), "choose one");
  ExpectInvalid(Tls(R"({"certFile": ")" + cert + R"("})"), "go together");
  ExpectInvalid(Tls(R"({"certFile": ")" + cert + R"(", "keyFile": ")" + cert +
                    R"(", "requireClientCert": true})"),
                "clientCaFile");
  ExpectInvalid(Tls(R"({"certFile": "/nonexistent/c.pem", "keyFile": ")" + cert + R"("})"),
                "server.tls.certFile: cannot read /nonexistent/c.pem");
  EXPECT_TRUE(ValidateServerTlsConfig(Tls(R"({"certFile": ")" + cert + R"(", "keyFile": ")" + cert +
                                          R"(", "clientCaFile": ")" + cert +
                                          R"(", "requireClientCert": true})"))
                  .ok());
}

TEST(TlsConfigTest, ClientSide) {
  v1::ClientTlsConfig tls;
  tls.set_ca_file("/nonexistent/ca.pem");
  EXPECT_TRUE(ValidateClientTlsConfig("cache.tls", "unix:/run/x.sock", tls).ok());
  absl::Status s = ValidateClientTlsConfig("cache.tls", "127.0.0.1:1", tls);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("cache.tls.caFile"), std::string::npos) << s;
  tls.Clear();
  tls.set_cert_file(TempFile("client.pem"));
  EXPECT_EQ(ValidateClientTlsConfig("cache.tls", "127.0.0.1:1", tls).code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace poolside::config
