#include "common/server/queue_reflection.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/descriptor.pb.h"

namespace poolside::server {
namespace {

using google::protobuf::Descriptor;
using google::protobuf::DescriptorPool;
using google::protobuf::FieldDescriptor;
using google::protobuf::FileDescriptor;

template <typename Response>
void SetError(Response* response, grpc::StatusCode code, std::string message) {
  auto* error = response->mutable_error_response();
  error->set_error_code(static_cast<int32_t>(code));
  error->set_error_message(std::move(message));
}

// `file` (always: clients read the first file as the answer) and then, depth
// first, those of its dependencies not in `sent` (the protocol lets a stream
// send each dependency once).
template <typename FileDescriptorResponse>
void AddFile(const FileDescriptor* file, FileDescriptorResponse* files,
             absl::flat_hash_set<std::string>* sent) {
  sent->insert(file->name());
  google::protobuf::FileDescriptorProto proto;
  file->CopyTo(&proto);
  proto.SerializeToString(files->add_file_descriptor_proto());
  for (int i = 0; i < file->dependency_count(); ++i) {
    if (!sent->contains(file->dependency(i)->name())) AddFile(file->dependency(i), files, sent);
  }
}

}  // namespace

ReflectionIndex::ReflectionIndex(std::vector<std::string> services)
    : services_(std::move(services)) {
  services_.push_back(ReflectionV1::Service::service_full_name());
  services_.push_back(ReflectionV1Alpha::Service::service_full_name());
}

template <typename Api>
typename Api::Response ReflectionIndex::Answer(const typename Api::Request& request,
                                               absl::flat_hash_set<std::string>* sent) const {
  using Request = typename Api::Request;
  typename Api::Response response;
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
    case Request::kListServices:
      for (const std::string& name : services_) {
        response.mutable_list_services_response()->add_service()->set_name(name);
      }
      break;
    case Request::kFileByFilename: {
      const std::string& name = request.file_by_filename();
      if (too_long(name)) break;
      send_file(pool->FindFileByName(name), [&] { return absl::StrCat("no file named ", name); });
      break;
    }
    case Request::kFileContainingSymbol: {
      const std::string& symbol = request.file_containing_symbol();
      if (too_long(symbol)) break;
      send_file(pool->FindFileContainingSymbol(symbol),
                [&] { return absl::StrCat("no symbol ", symbol); });
      break;
    }
    case Request::kFileContainingExtension: {
      const auto& extension = request.file_containing_extension();
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
    case Request::kAllExtensionNumbersOfType: {
      const std::string& name = request.all_extension_numbers_of_type();
      if (too_long(name)) break;
      const Descriptor* type = pool->FindMessageTypeByName(name);
      if (type == nullptr) {
        SetError(&response, grpc::StatusCode::NOT_FOUND, absl::StrCat("no message type ", name));
        break;
      }
      std::vector<const FieldDescriptor*> extensions;
      pool->FindAllExtensions(type, &extensions);
      auto* numbers = response.mutable_all_extension_numbers_response();
      numbers->set_base_type_name(type->full_name());
      for (const FieldDescriptor* field : extensions) {
        numbers->add_extension_number(field->number());
      }
      break;
    }
    case Request::MESSAGE_REQUEST_NOT_SET:
      SetError(&response, grpc::StatusCode::INVALID_ARGUMENT,
               "the request asks for nothing: set one of list_services, file_by_filename, "
               "file_containing_symbol, file_containing_extension, all_extension_numbers_of_type");
      break;
  }
  return response;
}

template ReflectionV1::Response ReflectionIndex::Answer<ReflectionV1>(
    const ReflectionV1::Request&, absl::flat_hash_set<std::string>*) const;
template ReflectionV1Alpha::Response ReflectionIndex::Answer<ReflectionV1Alpha>(
    const ReflectionV1Alpha::Request&, absl::flat_hash_set<std::string>*) const;

// One reflection stream: read a request, write its answer, read the next,
// until the client half-closes (then finish OK) or the call breaks.
template <typename Api>
class QueueReflectionService<Api>::Stream final
    : public QueueStreamCall<
          Stream, grpc::ServerAsyncReaderWriter<typename Api::Response, typename Api::Request>> {
  using Base =
      QueueStreamCall<Stream,
                      grpc::ServerAsyncReaderWriter<typename Api::Response, typename Api::Request>>;

 public:
  static void Post(QueueReflectionService* service) { new Stream(service); }

  // Ends the stream CANCELLED, with a status of its own (see
  // QueueStreamCall on why not TryCancel()): at once beside a read in flight
  // (which then comes back not ok), or once a write in flight is back.
  void End() {
    Forget();
    ended_ = true;
    if (!writing_) this->Finish(Ended());
  }

  void Forget() { service_->streams_.Remove(this); }

 private:
  friend Base;

  explicit Stream(QueueReflectionService* service) : service_(service) {
    service_->async_.RequestServerReflectionInfo(&this->context_, &this->stream_, service_->cq_,
                                                 service_->cq_, &requested_);
  }
  ~Stream() = default;

  void OnRequested(bool ok) {
    if (!this->Arrived(ok, service_->method_)) return;
    Post(service_);
    switch (service_->streams_.Admit(this)) {
      case OpenCalls<Stream>::Admission::kClosed:
        this->Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE, "the server is shutting down"));
        return;
      case OpenCalls<Stream>::Admission::kFull:
        this->Finish(
            grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                         absl::StrCat("too many reflection streams open on this server (at most ",
                                      kMaxStreams, ")")));
        return;
      case OpenCalls<Stream>::Admission::kAdmitted:
        this->stream_.Read(&request_, this->Start(&read_));
        return;
    }
  }

  static grpc::Status Ended() {
    return grpc::Status(grpc::StatusCode::CANCELLED, "the server is shutting down");
  }

  void OnRead(bool ok) {
    this->Returned();
    if (ended_) {
      // Finished already: a request read meanwhile goes unanswered.
    } else if (!ok) {  // the client is done sending, or the call broke
      Forget();
      this->Finish(grpc::Status::OK);
    } else {
      response_ = service_->index_->template Answer<Api>(request_, &sent_);
      writing_ = true;
      this->stream_.Write(response_, this->Start(&written_));
    }
    this->MaybeDelete();
  }

  void OnWritten(bool ok) {
    this->Returned();
    writing_ = false;
    if (!ok) {
      this->Broke();
    } else if (ended_) {
      this->Finish(Ended());
    } else {
      this->stream_.Read(&request_, this->Start(&read_));
    }
    this->MaybeDelete();
  }

  QueueReflectionService* const service_;
  QueueStep<Stream, &Stream::OnRequested> requested_{this};
  QueueStep<Stream, &Stream::OnRead> read_{this};
  QueueStep<Stream, &Stream::OnWritten> written_{this};

  typename Api::Request request_;
  typename Api::Response response_;
  absl::flat_hash_set<std::string> sent_;  // files sent on this stream
  bool writing_ = false;                   // a write is in flight
  bool ended_ = false;                     // ended by End()
};

template <typename Api>
void QueueReflectionService<Api>::Begin(grpc::ServerCompletionQueue* cq,
                                        telemetry::ServerCallTelemetry* calls) {
  cq_ = cq;
  method_ = QueueMethod<typename Api::Service>(
      calls, "ServerReflectionInfo", grpc::experimental::ServerRpcInfo::Type::BIDI_STREAMING);
  for (int i = 0; i < 2; ++i) Stream::Post(this);
}

template <typename Api>
void QueueReflectionService<Api>::EndStreams() {
  if (cq_ == nullptr) return;  // never served
  RunOnQueue(cq_, [this] { streams_.Close([](Stream* stream) { stream->End(); }); });
}

template class QueueReflectionService<ReflectionV1>;
template class QueueReflectionService<ReflectionV1Alpha>;

}  // namespace poolside::server
