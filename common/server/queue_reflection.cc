#include "common/server/queue_reflection.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/descriptor.pb.h"

namespace poolside::server {
namespace {

namespace reflection = grpc::reflection::v1alpha;
using google::protobuf::Descriptor;
using google::protobuf::DescriptorPool;
using google::protobuf::FieldDescriptor;
using google::protobuf::FileDescriptor;

void SetError(reflection::ServerReflectionResponse* response, grpc::StatusCode code,
              std::string message) {
  reflection::ErrorResponse* error = response->mutable_error_response();
  error->set_error_code(static_cast<int32_t>(code));
  error->set_error_message(std::move(message));
}

// `file` (always: clients read the first file as the answer) and then, depth
// first, those of its dependencies not in `sent` (the protocol lets a stream
// send each dependency once).
void AddFile(const FileDescriptor* file, reflection::FileDescriptorResponse* files,
             absl::flat_hash_set<std::string>* sent) {
  sent->insert(file->name());
  google::protobuf::FileDescriptorProto proto;
  file->CopyTo(&proto);
  proto.SerializeToString(files->add_file_descriptor_proto());
  for (int i = 0; i < file->dependency_count(); ++i) {
    if (!sent->contains(file->dependency(i)->name())) AddFile(file->dependency(i), files, sent);
  }
}

// Bounds what a request may name (a symbol or file name is far shorter).
constexpr size_t kMaxNameBytes = 1024;

}  // namespace

// One reflection stream: read a request, write its answer, read the next,
// until the client half-closes (then finish OK) or the call breaks.
class QueueReflectionService::Stream final
    : public QueueStreamCall<Stream,
                             grpc::ServerAsyncReaderWriter<reflection::ServerReflectionResponse,
                                                           reflection::ServerReflectionRequest>> {
 public:
  static void Post(QueueReflectionService* service) { new Stream(service); }

  // Cancels the stream: its pending operation comes back failed.
  void End() {
    Forget();
    ended_ = true;
    context_.TryCancel();
  }

  void Forget() { service_->streams_.Remove(this); }

 private:
  friend QueueStreamCall;

  explicit Stream(QueueReflectionService* service) : service_(service) {
    service_->async_.RequestServerReflectionInfo(&context_, &stream_, service_->cq_, service_->cq_,
                                                 &requested_);
  }
  ~Stream() = default;

  void OnRequested(bool ok) {
    if (!Arrived(ok, service_->method_)) return;
    Post(service_);
    switch (service_->streams_.Admit(this)) {
      case OpenCalls<Stream>::Admission::kClosed:
        Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE, "the server is shutting down"));
        return;
      case OpenCalls<Stream>::Admission::kFull:
        Finish(
            grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                         absl::StrCat("too many reflection streams open on this server (at most ",
                                      kMaxStreams, ")")));
        return;
      case OpenCalls<Stream>::Admission::kAdmitted:
        stream_.Read(&request_, Start(&read_));
        return;
    }
  }

  void OnRead(bool ok) {
    Returned();
    if (!ok) {  // the client is done sending, or the call broke or was ended
      Forget();
      if (!ended_) Finish(grpc::Status::OK);
    } else {
      response_ = service_->Answer(request_, &sent_);
      stream_.Write(response_, Start(&written_));
    }
    MaybeDelete();
  }

  void OnWritten(bool ok) {
    Returned();
    if (ok) {
      stream_.Read(&request_, Start(&read_));
    } else {
      Broke();
    }
    MaybeDelete();
  }

  QueueReflectionService* const service_;
  QueueStep<Stream, &Stream::OnRequested> requested_{this};
  QueueStep<Stream, &Stream::OnRead> read_{this};
  QueueStep<Stream, &Stream::OnWritten> written_{this};

  reflection::ServerReflectionRequest request_;
  reflection::ServerReflectionResponse response_;
  absl::flat_hash_set<std::string> sent_;  // files sent on this stream
  bool ended_ = false;                     // cancelled by End()
};

QueueReflectionService::QueueReflectionService(std::vector<std::string> services)
    : services_(std::move(services)) {
  services_.push_back(service_name());
}

std::string QueueReflectionService::service_name() const {
  return reflection::ServerReflection::service_full_name();
}

void QueueReflectionService::Begin(grpc::ServerCompletionQueue* cq,
                                   telemetry::ServerCallTelemetry* calls) {
  cq_ = cq;
  method_ = QueueMethod<reflection::ServerReflection>(
      calls, "ServerReflectionInfo", grpc::experimental::ServerRpcInfo::Type::BIDI_STREAMING);
  for (int i = 0; i < 2; ++i) Stream::Post(this);
}

void QueueReflectionService::EndStreams() {
  if (cq_ == nullptr) return;  // never served
  RunOnQueue(cq_, [this] { streams_.Close([](Stream* stream) { stream->End(); }); });
}

reflection::ServerReflectionResponse QueueReflectionService::Answer(
    const reflection::ServerReflectionRequest& request,
    absl::flat_hash_set<std::string>* sent) const {
  reflection::ServerReflectionResponse response;
  response.set_valid_host(request.host().substr(0, kMaxNameBytes));
  *response.mutable_original_request() = request;
  const DescriptorPool* pool = DescriptorPool::generated_pool();
  auto too_long = [&](const std::string& name) {
    if (name.size() <= kMaxNameBytes) return false;
    response.mutable_original_request()->Clear();
    SetError(&response, grpc::StatusCode::INVALID_ARGUMENT,
             absl::StrCat("a name of ", name.size(), " bytes (at most ", kMaxNameBytes, ")"));
    return true;
  };
  // `file` and those of its dependencies not yet sent, or NOT_FOUND with
  // not_found()'s message.
  auto send_file = [&](const FileDescriptor* file, auto not_found) {
    if (file == nullptr) {
      SetError(&response, grpc::StatusCode::NOT_FOUND, not_found());
    } else {
      AddFile(file, response.mutable_file_descriptor_response(), sent);
    }
  };
  switch (request.message_request_case()) {
    case reflection::ServerReflectionRequest::kListServices:
      for (const std::string& name : services_) {
        response.mutable_list_services_response()->add_service()->set_name(name);
      }
      break;
    case reflection::ServerReflectionRequest::kFileByFilename: {
      const std::string& name = request.file_by_filename();
      if (too_long(name)) break;
      send_file(pool->FindFileByName(name), [&] { return absl::StrCat("no file named ", name); });
      break;
    }
    case reflection::ServerReflectionRequest::kFileContainingSymbol: {
      const std::string& symbol = request.file_containing_symbol();
      if (too_long(symbol)) break;
      send_file(pool->FindFileContainingSymbol(symbol),
                [&] { return absl::StrCat("no symbol ", symbol); });
      break;
    }
    case reflection::ServerReflectionRequest::kFileContainingExtension: {
      const reflection::ExtensionRequest& extension = request.file_containing_extension();
      if (too_long(extension.containing_type())) break;
      const Descriptor* type = pool->FindMessageTypeByName(extension.containing_type());
      const FieldDescriptor* field =
          type == nullptr ? nullptr
                          : pool->FindExtensionByNumber(type, extension.extension_number());
      send_file(field == nullptr ? nullptr : field->file(), [&] {
        return absl::StrCat("no extension ", extension.extension_number(), " of ",
                            extension.containing_type());
      });
      break;
    }
    case reflection::ServerReflectionRequest::kAllExtensionNumbersOfType: {
      const std::string& name = request.all_extension_numbers_of_type();
      if (too_long(name)) break;
      const Descriptor* type = pool->FindMessageTypeByName(name);
      if (type == nullptr) {
        SetError(&response, grpc::StatusCode::NOT_FOUND, absl::StrCat("no message type ", name));
        break;
      }
      std::vector<const FieldDescriptor*> extensions;
      pool->FindAllExtensions(type, &extensions);
      reflection::ExtensionNumberResponse* numbers =
          response.mutable_all_extension_numbers_response();
      numbers->set_base_type_name(type->full_name());
      for (const FieldDescriptor* field : extensions)
        numbers->add_extension_number(field->number());
      break;
    }
    case reflection::ServerReflectionRequest::MESSAGE_REQUEST_NOT_SET:
      SetError(&response, grpc::StatusCode::INVALID_ARGUMENT,
               "the request asks for nothing: set one of list_services, file_by_filename, "
               "file_containing_symbol, file_containing_extension, all_extension_numbers_of_type");
      break;
  }
  return response;
}

}  // namespace poolside::server
