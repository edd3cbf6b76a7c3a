// java.net.http.HttpClient, one client for every request (its own pool, HTTP/1.1): 5 requests at
// once in each burst. The JDK watches its idle pooled connections and closes one as soon as the
// server ends it: no CLOSE-WAIT stays. Clean.
// Run: java HttpClientPool.java URL
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.CompletableFuture;

public class HttpClientPool {
    public static void main(String[] args) throws Exception {
        HttpClient client = HttpClient.newBuilder().version(HttpClient.Version.HTTP_1_1).build();
        HttpRequest req = HttpRequest.newBuilder(URI.create(args[0])).build();
        for (int round = 0; round < 3; round++) {
            List<CompletableFuture<HttpResponse<String>>> burst = new ArrayList<>();
            for (int i = 0; i < 5; i++) {
                burst.add(client.sendAsync(req, HttpResponse.BodyHandlers.ofString()));
            }
            for (CompletableFuture<HttpResponse<String>> f : burst) {
                f.get();
            }
            Thread.sleep(600);
        }
        Thread.sleep(1500);
        System.exit(0);
    }
}
